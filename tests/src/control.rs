//! A `berth-control` process for a testbed or the local cluster: started on
//! loopback with its own data directory, stopped when the guard drops
//! (unless kept, for `cargo xtask up`; then a pid file lets `down` stop it).

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::Error;

/// How long the server may take to come up or go down.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
    listen: SocketAddr,
}

impl ControlPlane {
    /// Starts `bin` (the berth-control binary) listening on `listen`, with
    /// its store, certificates and log under `data_dir`, and waits until it
    /// serves.
    pub fn start(bin: &Path, data_dir: &Path, listen: SocketAddr) -> Result<Self, Error> {
        fs::create_dir_all(data_dir).map_err(|e| Error::io("create", data_dir, e))?;
        let log = data_dir.join("control.log");
        let log_file = fs::File::create(&log).map_err(|e| Error::io("create", &log, e))?;
        let child = Command::new(bin)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            // Its own process group: Ctrl-C in the terminal that ran
            // `cargo xtask up` does not stop it.
            .process_group(0)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: bin.display().to_string(),
                source,
            })?;
        let mut control = ControlPlane {
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            log,
            listen,
        };
        control.wait_ready()?;
        Ok(control)
    }

    fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::io(
                        "berth-control exited",
                        &self.log,
                        std::io::Error::other(format!("{status}: {}", self.log_tail())),
                    ));
                }
            }
            if self.kubeconfig().exists() && TcpStream::connect(self.listen).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::io(
                    "berth-control did not start",
                    &self.log,
                    std::io::Error::from(std::io::ErrorKind::TimedOut),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    /// `https://<listen>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.listen)
    }

    /// The server's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Leaves the server running after this guard is gone and records its
    /// pid in `pid_file`, for [`stop`].
    pub fn persist(mut self, pid_file: &Path) -> Result<(), Error> {
        if let Some(child) = self.child.take() {
            fs::write(pid_file, child.id().to_string())
                .map_err(|e| Error::io("write", pid_file, e))?;
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops the server whose pid `pid_file` holds (SIGTERM, then SIGKILL) and
/// removes the file. A missing file or process is success.
pub fn stop(pid_file: &Path) -> Result<(), Error> {
    let Ok(text) = fs::read_to_string(pid_file) else {
        return Ok(());
    };
    if let Ok(pid) = text.trim().parse::<i32>() {
        let pid = Pid::from_raw(pid);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    fs::remove_file(pid_file).map_err(|e| Error::io("remove", pid_file, e))
}
