//! Errors of the testbed.

use std::path::PathBuf;

/// What failed while building or tearing down a testbed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file-system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path it touched.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A network namespace could not be entered.
    #[error(transparent)]
    Netns(#[from] berth_net::netns::NetnsError),
    /// The datapath could not be loaded on a node.
    #[error("node {node}: {source}")]
    Datapath {
        /// The node.
        node: String,
        /// What the eBPF layer reported.
        #[source]
        source: berth_ebpf::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
