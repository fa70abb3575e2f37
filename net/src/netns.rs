//! Work inside a network namespace. `setns` changes the namespace of the
//! calling thread only, so the work runs on a short-lived thread of its
//! own that enters the namespace and ends with the work: the caller's
//! threads never change namespace, and nothing needs restoring. Sockets
//! the work creates stay in the namespace after it returns.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

/// What can go wrong entering a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The namespace file cannot be opened.
    #[error("cannot open network namespace {path}: {source}")]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a namespace (`/run/netns/<name>`,
    /// `/proc/<pid>/ns/net` are).
    #[error("{path} is not a namespace file")]
    NotNamespace {
        /// The file.
        path: PathBuf,
    },
    /// The kernel refused to enter the namespace.
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// Why.
        source: nix::errno::Errno,
    },
    /// The work panicked (with this message).
    #[error("work inside a network namespace panicked: {0}")]
    Panicked(String),
}

impl NetnsError {
    /// Whether the namespace file does not exist (for `/proc/<pid>/ns/net`:
    /// the process has gone).
    pub fn is_not_found(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

impl From<NetnsError> for std::io::Error {
    fn from(e: NetnsError) -> Self {
        match e {
            NetnsError::Open { source, .. } => source,
            NetnsError::Enter { source, .. } => source.into(),
            other => std::io::Error::other(other),
        }
    }
}

/// Opens a network namespace file, refusing files that are not
/// namespaces (a path to a directory or a regular file by mistake).
pub fn open(path: &Path) -> Result<File, NetnsError> {
    let file = File::open(path).map_err(|source| NetnsError::Open {
        path: path.to_owned(),
        source,
    })?;
    let fs = fstatfs(&file).map_err(|e| NetnsError::Open {
        path: path.to_owned(),
        source: e.into(),
    })?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(NetnsError::NotNamespace {
            path: path.to_owned(),
        });
    }
    Ok(file)
}

/// Runs `work` on a new thread inside the network namespace at `netns`
/// (in this process's own namespace when `None`) and returns its result.
/// A panic in `work` is returned as [`NetnsError::Panicked`].
pub fn run_in<T: Send>(
    netns: Option<&Path>,
    work: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    let file = netns.map(open).transpose()?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let (Some(file), Some(path)) = (&file, netns) {
                    setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
                        path: path.to_owned(),
                        source,
                    })?;
                }
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| Err(NetnsError::Panicked(panic_message(&*panic))))
    })
}

/// The message a panic carried, if it was text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_work_in_the_own_namespace_and_returns_its_result() {
        assert_eq!(run_in(None, || 7).unwrap(), 7);
    }

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let e = run_in(None, || -> u8 { panic!("boom {}", 1) }).unwrap_err();
        assert!(
            matches!(&e, NetnsError::Panicked(m) if m == "boom 1"),
            "{e}"
        );
    }

    #[test]
    fn files_that_are_not_namespaces_are_refused() {
        let e = open(Path::new("/proc/self/status")).unwrap_err();
        assert!(matches!(e, NetnsError::NotNamespace { .. }), "{e}");
        let e = run_in(Some(Path::new("/nonexistent/netns")), || ()).unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn the_own_namespace_file_opens() {
        open(Path::new("/proc/self/ns/net")).unwrap();
    }
}
