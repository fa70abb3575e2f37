//! The runtime library's error: one enum, each variant naming what was
//! wrong and where.

use std::path::PathBuf;

/// Everything the runtime library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No container with this id under the runtime's root.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// A container with this id already exists.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// The id cannot name a container.
    #[error("invalid container id {id:?}: {source}")]
    InvalidId {
        id: String,
        source: libcontainer::error::ErrInvalidID,
    },
    /// The bundle directory is missing or is not a directory.
    #[error("bundle {0} does not exist or is not a directory")]
    NoBundle(PathBuf),
    /// A file could not be read, written or removed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON document (config.json, a process file, resources) does not parse.
    #[error("{what} is not valid: {source}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    /// The operation does not apply to the container in its current state.
    #[error("container {id:?} is {status}: cannot {op} it")]
    WrongStatus {
        id: String,
        /// The runtime-spec status name (`created`, `running`, …).
        status: &'static str,
        op: &'static str,
    },
    /// The configuration is wrong; the message names the field.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The configuration asks for something this runtime does not do.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// A signal name or number not known on Linux.
    #[error("unknown signal {0:?}")]
    Signal(String),
    /// A system call failed.
    #[error("{call}: {source}")]
    Sys {
        call: &'static str,
        source: nix::Error,
    },
    /// libcontainer refused or failed.
    #[error(transparent)]
    Container(#[from] libcontainer::error::LibcontainerError),
    /// The container's cgroup could not be found or changed.
    #[error(transparent)]
    CgroupSetup(#[from] libcgroups::common::CreateCgroupSetupError),
    /// A cgroup controller refused an operation.
    #[error(transparent)]
    Cgroup(#[from] libcgroups::common::AnyManagerError),
    /// A failure, and a second one while undoing what the first left behind.
    #[error("{error}; cleaning up afterwards also failed: {cleanup}")]
    Cleanup {
        error: Box<Error>,
        cleanup: Box<Error>,
    },
}

/// The runtime library's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn sys(call: &'static str) -> impl FnOnce(nix::Error) -> Self {
        move |source| Error::Sys { call, source }
    }
}
