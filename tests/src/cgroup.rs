//! cgroup2 directories for nodes, removed with everything in them.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{exec_hooks, Error};

/// The machine's cgroup2 hierarchy (hybrid layout: controllers stay on v1).
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

/// How long removal waits for killed processes to leave a cgroup.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A cgroup2 directory, removed (its processes killed) when dropped unless
/// kept.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    keep: bool,
}

impl Cgroup {
    /// Creates the cgroup directory `path` and any missing parents.
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        fs::create_dir_all(&path).map_err(|e| Error::io("create cgroup", &path, e))?;
        Ok(Cgroup { path, keep: false })
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `cmd`'s process start inside this cgroup.
    pub fn add_on_spawn(&self, cmd: &mut Command) -> Result<(), Error> {
        let procs = self.path.join("cgroup.procs");
        let file = OpenOptions::new()
            .write(true)
            .open(&procs)
            .map_err(|e| Error::io("open", &procs, e))?;
        exec_hooks::join_cgroup(cmd, file);
        Ok(())
    }

    /// The pids of the processes directly in this cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, Error> {
        let procs = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&procs).map_err(|e| Error::io("read", &procs, e))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Leaves the cgroup in place when this guard is dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "cannot remove cgroup");
        }
    }
}

/// Kills every process below `path` and removes the cgroup tree, deepest
/// first. A missing directory is success.
pub(crate) fn remove_tree(path: &Path) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    let entries = fs::read_dir(path).map_err(|e| Error::io("list cgroup", path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list cgroup", path, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    kill_all(path)?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(Error::io("remove cgroup", path, e)),
        }
    }
}

/// SIGKILLs every process in the cgroup (`cgroup.kill`, Linux ≥ 5.14).
fn kill_all(path: &Path) -> Result<(), Error> {
    let kill = path.join("cgroup.kill");
    let has_procs =
        fs::read_to_string(path.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty());
    if has_procs {
        let mut file = File::options()
            .write(true)
            .open(&kill)
            .map_err(|e| Error::io("open", &kill, e))?;
        std::io::Write::write_all(&mut file, b"1").map_err(|e| Error::io("write", &kill, e))?;
    }
    Ok(())
}
