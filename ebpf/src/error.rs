//! Errors of the datapath API.

use std::path::PathBuf;

/// What went wrong loading, attaching or programming the datapath.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A libbpf call failed; `op` names what was being done.
    #[error("{op}: {source}")]
    Bpf {
        /// The operation, e.g. "load sock_lb".
        op: String,
        /// libbpf's error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A file-system operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation, e.g. "create pin directory".
        op: &'static str,
        /// The path it touched.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A map is full: the entry was not written.
    #[error("map {map} is full ({max_entries} entries); raise its size")]
    MapFull {
        /// The map's name.
        map: &'static str,
        /// Its configured size.
        max_entries: u32,
    },
    /// A map entry did not have the size of the type it should hold.
    #[error("map {map}: entry of {actual} bytes, expected {expected}")]
    EntrySize {
        /// The map's name.
        map: &'static str,
        /// Size of the Rust mirror of the C type.
        expected: usize,
        /// Size found.
        actual: usize,
    },
    /// The frontend is not in the maps.
    #[error("no frontend {0} in the maps")]
    NoSuchFrontend(String),
    /// A service asks for more backends than a frontend can hold.
    #[error("service {frontend} has {count} backends; at most {max} are supported")]
    TooManyBackends {
        /// The frontend, printed.
        frontend: String,
        /// Backends asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The ephemeral port range leaves too few ports for translation.
    #[error(
        "net.ipv4.ip_local_port_range {}-{} leaves fewer than 1024 ports above or below it for NodePort translation",
        ephemeral.0,
        ephemeral.1
    )]
    NoSnatPorts {
        /// The range (first, last).
        ephemeral: (u16, u16),
    },
    /// Reading a whole array map returned fewer entries than it has.
    #[error("map {map}: read {read} of its {expected} entries")]
    ShortRead {
        /// The map's name.
        map: &'static str,
        /// Entries read.
        read: usize,
        /// Entries the map has.
        expected: usize,
    },
}

impl Error {
    pub(crate) fn bpf(op: impl Into<String>, source: libbpf_rs::Error) -> Self {
        Error::Bpf {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
