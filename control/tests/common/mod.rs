//! A real `berth-control` process for tests: its own data directory and
//! loopback port, stopped (and its directory removed) when dropped.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running server.
pub(crate) struct Server {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// Starts a server on a free loopback port.
    pub(crate) fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = free_port();
        let mut server = Server {
            dir,
            addr,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_berth-control"))
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn berth-control");
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

    /// Kills the server with SIGKILL (no shutdown at all).
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data.
    pub(crate) fn restart(&mut self) {
        self.kill();
        self.spawn();
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

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}
