//! bpffs directories for a run's pinned maps and links.

use std::fs;
use std::path::{Path, PathBuf};

use crate::Error;

/// A directory on bpffs, removed with every pin in it when dropped unless
/// kept. Removing a link's last pin detaches its program.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
    keep: bool,
}

impl PinDir {
    /// Creates `path` (mounting bpffs at its usual place if needed).
    pub fn create(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let path = path.into();
        berth_ebpf::bpffs::ensure_mounted(Path::new(berth_ebpf::bpffs::DEFAULT_ROOT)).map_err(
            |source| Error::Datapath {
                node: path.display().to_string(),
                source,
            },
        )?;
        fs::create_dir_all(&path).map_err(|e| Error::io("create pin directory", &path, e))?;
        Ok(PinDir { path, keep: false })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place when this guard is dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = remove(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove pin directory");
        }
    }
}

/// Removes a pin directory and its contents; missing is success.
pub(crate) fn remove(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("remove pin directory", path, e))
        }
        _ => Ok(()),
    }
}
