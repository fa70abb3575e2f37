//! Berth's OCI runtime, on youki's `libcontainer`.
//!
//! - [`container`]: containers under a state root with runc's verbs; the
//!   `berth-runtime` binary is its command line, compatible with runc's as
//!   `containerd-shim-runc-v2` calls it.
//! - [`spec`]: the default configuration and what `create` adds to a
//!   bundle's (`cgroupsPath` always set).
//! - [`image`]: the image store (OCI layouts, shared unpacked layers,
//!   overlay root filesystems).
//! - [`pod`]: pod sandboxes (`berth-pause`) and app containers joining
//!   their namespaces, driven through the `berth-runtime` binary.
//! - [`wait`]: waiting for a foreground process, forwarding signals.
//!
//! libcontainer forks and must be called from a single-threaded process:
//! callers that run an async runtime (the agent) call the `berth-runtime`
//! binary, never this library.

pub mod container;
pub mod error;
pub mod image;
pub mod pod;
pub mod spec;
mod stdio;
pub mod wait;

pub use container::{CreateOptions, ExecOptions, Runtime, State};
pub use error::{Error, Result};
