//! Real etcd processes for tests (Debian's etcd-server): one member or a
//! cluster of several, on loopback ports, data in a temp dir, killed when
//! dropped.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One etcd member.
struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    child: Mutex<Option<Child>>,
}

/// An etcd cluster of one or more members.
pub(crate) struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// With TLS: the CA (PEM) clients must trust and the client
    /// certificate and key (PEM) etcd requires.
    tls: Option<TlsFiles>,
}

/// Files of a TLS-serving etcd.
pub(crate) struct TlsFiles {
    pub(crate) ca: std::path::PathBuf,
    pub(crate) client_cert: std::path::PathBuf,
    pub(crate) client_key: std::path::PathBuf,
    server_cert: std::path::PathBuf,
    server_key: std::path::PathBuf,
}

impl EtcdCluster {
    /// Starts `size` members and waits until each accepts clients.
    pub(crate) fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, false)
    }

    /// One member serving clients over TLS and requiring client
    /// certificates signed by its CA.
    pub(crate) fn start_tls() -> EtcdCluster {
        EtcdCluster::start_with(1, true)
    }

    fn start_with(size: usize, tls: bool) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let tls = tls.then(|| make_tls(dir.path()));
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: super::free_port(),
                peer: super::free_port(),
                child: Mutex::new(None),
            })
            .collect();
        let cluster = EtcdCluster { dir, members, tls };
        for i in 0..size {
            cluster.spawn(i);
        }
        for i in 0..size {
            cluster.wait(i);
        }
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&self, i: usize) {
        let initial = self.initial_cluster();
        let member = &self.members[i];
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", member.name)))
            .expect("log");
        let scheme = self.scheme();
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(self.dir.path().join(&member.name))
            .args([
                "--listen-client-urls",
                &format!("{scheme}://{}", member.client),
            ])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://{}", member.client),
            ])
            .args(["--listen-peer-urls", &format!("http://{}", member.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", member.peer),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args([
                "--initial-cluster-token",
                &format!("berth-test-{}", std::process::id()),
            ])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (install etcd-server: cargo xtask deps)");
        *lock(&self.members[i].child) = Some(child);
    }

    /// Waits until member `i` reports itself healthy (it has a leader and
    /// serves), so a test never kills a member that is still initialising.
    fn wait(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = self.members[i].client;
        let tls = self.tls.is_some();
        // A TLS member is checked by its port only (the health probe
        // speaks plain HTTP); berth-control's own retries cover the rest.
        while !(if tls {
            TcpStream::connect(addr).is_ok()
        } else {
            healthy(addr)
        }) {
            let exited = lock(&self.members[i].child).as_mut().map(Child::try_wait);
            if let Some(Ok(Some(status))) = exited {
                panic!(
                    "etcd {} exited: {status}\n{}",
                    self.members[i].name,
                    self.log(i)
                );
            }
            assert!(
                Instant::now() < deadline,
                "etcd {} did not start:\n{}",
                self.members[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log(&self, i: usize) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default()
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The TLS files, for a TLS-serving cluster.
    pub(crate) fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Client URLs of every member, comma-separated.
    pub(crate) fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}://{}", self.scheme(), m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills member `i` (SIGKILL).
    pub(crate) fn kill(&self, i: usize) {
        if let Some(mut child) = lock(&self.members[i].child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `i` again with its data.
    pub(crate) fn restart(&self, i: usize) {
        self.kill(i);
        // An existing data dir makes etcd rejoin; the flags stay the same.
        self.spawn(i);
        self.wait(i);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `GET /health` answers `{"health":"true"}`.
fn healthy(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if conn.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = conn.read_to_string(&mut response);
    response.contains("\"health\":\"true\"")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all
/// written under `dir`.
fn make_tls(dir: &std::path::Path) -> TlsFiles {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write TLS file");
        path
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "berth test etcd CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    let localhost = SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]));
    let (server_cert, server_key) =
        leaf("etcd", vec![localhost], ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) =
        leaf("berth-control", vec![], ExtendedKeyUsagePurpose::ClientAuth);
    TlsFiles {
        ca: write("ca.pem", &ca_cert.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}
