//! Network namespaces, named under `/run/netns` as `ip netns` names them.

use std::ffi::OsStr;
use std::fs::File;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use berth_net::netns::{run_in, NetnsError};

use crate::cmd::ip;
use crate::{exec_hooks, Error};

/// Where `ip netns` keeps named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

/// `ip netns add` sets up the shared `/run/netns` mount on first use; two at
/// once can race on it, so creations within a process take turns.
static CREATE: Mutex<()> = Mutex::new(());

/// A named network namespace, deleted when dropped (unless kept).
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Creates the namespace `name` with its loopback up.
    pub fn create(name: &str) -> Result<Self, Error> {
        {
            let _turn = CREATE.lock().unwrap_or_else(|e| e.into_inner());
            ip(&["netns", "add", name])?;
        }
        let ns = Netns {
            name: name.to_string(),
            keep: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mounted file, `/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    fn open(&self) -> Result<File, Error> {
        let path = self.path();
        File::open(&path).map_err(|e| Error::io("open network namespace", path, e))
    }

    /// Runs `ip -n <name> ARGS...`.
    pub fn ip(&self, args: &[&str]) -> Result<String, Error> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command whose process starts inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Result<Command, Error> {
        let mut cmd = Command::new(program);
        exec_hooks::enter_netns(&mut cmd, self.open()?);
        Ok(cmd)
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it
    /// creates belong to the namespace and keep working after `f` returns.
    /// A panic in `f` is passed on to the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        match run_in(Some(&self.path()), f) {
            Err(NetnsError::Panicked(message)) => panic!("{message}"),
            other => Ok(other?),
        }
    }

    /// Leaves the namespace in place when this guard is dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        if let Err(e) = delete(&self.name) {
            tracing::warn!(netns = %self.name, error = %e, "cannot delete network namespace");
        }
    }
}

/// Deletes the named namespace; its interfaces go with it.
pub(crate) fn delete(name: &str) -> Result<(), Error> {
    ip(&["netns", "delete", name]).map(drop)
}
