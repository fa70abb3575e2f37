//! A real `berth-control` process for tests: its own data directory and
//! loopback port, stopped (and its directory removed) when dropped.

#![allow(dead_code, unused_macros)] // Each test binary uses a different part of this module.

pub(crate) mod etcd;

/// Runs each named async test function (taking a [`Backend`]) once on the
/// embedded store and once on a real etcd.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::common::Backend::Embedded).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::common::Backend::Etcd).await;
                }
            )*
        }
    };
}

/// The same for blocking test functions.
macro_rules! on_both_stores_blocking {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[test]
                fn $name() {
                    super::$name(super::common::Backend::Embedded);
                }
            )*
        }
        mod etcd {
            $(
                #[test]
                fn $name() {
                    super::$name(super::common::Backend::Etcd);
                }
            )*
        }
    };
}

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running server.
pub(crate) struct Server {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    extra: Vec<String>,
    /// The open-files limit (soft and hard) the server starts with.
    nofile: Option<u64>,
    child: Option<Child>,
    /// The etcd it stores into, if any (dropped after the server stops).
    etcd: Option<std::sync::Arc<etcd::EtcdCluster>>,
}

/// Which store a test server uses.
pub(crate) enum Backend {
    /// The embedded database.
    Embedded,
    /// A fresh single-member etcd of its own.
    Etcd,
}

impl Server {
    /// Starts a server on a free loopback port with the embedded store.
    pub(crate) fn start(extra: &[&str]) -> Server {
        Server::start_on(Backend::Embedded, extra)
    }

    /// Starts a server (embedded store) whose open-files limit, soft and
    /// hard, is `nofile`.
    pub(crate) fn start_with_open_files(nofile: u64, extra: &[&str]) -> Server {
        let mut server = Server::launch_stopped(None, extra);
        server.nofile = Some(nofile);
        server.spawn();
        server
    }

    /// Starts a server on `backend`.
    pub(crate) fn start_on(backend: Backend, extra: &[&str]) -> Server {
        match backend {
            Backend::Embedded => Server::launch(None, extra),
            Backend::Etcd => {
                Server::with_etcd(std::sync::Arc::new(etcd::EtcdCluster::start(1)), extra)
            }
        }
    }

    /// Starts a server storing into `etcd` (which may be shared with other
    /// servers).
    pub(crate) fn with_etcd(etcd: std::sync::Arc<etcd::EtcdCluster>, extra: &[&str]) -> Server {
        Server::launch(Some(etcd), extra)
    }

    fn launch(etcd: Option<std::sync::Arc<etcd::EtcdCluster>>, extra: &[&str]) -> Server {
        let mut server = Server::launch_stopped(etcd, extra);
        server.spawn();
        server
    }

    fn launch_stopped(etcd: Option<std::sync::Arc<etcd::EtcdCluster>>, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = free_port();
        let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        if let Some(etcd) = &etcd {
            args.extend([
                "--store".into(),
                "etcd".into(),
                "--etcd-endpoints".into(),
                etcd.endpoints(),
            ]);
        }
        Server {
            dir,
            addr,
            extra: args,
            nofile: None,
            child: None,
            etcd,
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth-control"));
        command
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(nofile) = self.nofile {
            let limit = libc::rlimit {
                rlim_cur: nofile,
                rlim_max: nofile,
            };
            // SAFETY: setrlimit is async-signal-safe and `limit` lives in
            // the child's copy of this stack frame.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().expect("spawn berth-control");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("berth-control exited ({status}):\n{}", self.log());
                }
            }
            if TcpStream::connect(self.addr).is_ok() && self.kubeconfig().exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("berth-control did not start:\n{}", self.log());
    }

    /// The server's resident memory in KiB (0 when not running).
    pub(crate) fn rss_kib(&self) -> u64 {
        let Some(child) = self.child.as_ref() else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Whether the server process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the server with SIGKILL (no shutdown at all).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the server (SIGSTOP and SIGCONT freeze and thaw
    /// it).
    pub(crate) fn signal(&self, signal: i32) {
        if let Some(pid) = self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok()) {
            // SAFETY: kill(2) takes no memory; the pid is our child's, not
            // yet reaped.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it.
    pub(crate) fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) takes no memory; the pid is our child's,
                // not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The address the server listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The data directory.
    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The admin kubeconfig the server wrote.
    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.data_dir().join("admin.kubeconfig")
    }

    /// The server's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kubectl ARGS...` against this server, with a private cache.
    pub(crate) fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args).output().expect("run kubectl")
    }

    /// `kubectl ARGS...`, expected to succeed; returns stdout.
    pub(crate) fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The kubectl command, to spawn or feed.
    pub(crate) fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.dir.path().join("kube-cache"))
            .args(args);
        cmd
    }

    /// A kube client authenticated as admin.
    pub(crate) async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig()).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A kube client from a kubeconfig file.
pub(crate) async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kube config");
    kube::Client::try_from(config).expect("kube client")
}

/// A loopback address with a port free now and never handed out before by
/// this process: a port released by a killed etcd must not go to the next
/// server of the same test.
pub(crate) fn free_port() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a free port");
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}
