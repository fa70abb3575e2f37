//! Calling a CNI plugin the way a container runtime does: a process per
//! call, run in the node's network namespace, with `CNI_*` variables and
//! the network configuration on stdin.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Error, Netns};

/// What a plugin call printed and how it ended.
#[derive(Debug)]
pub struct Reply {
    /// Exit status 0.
    pub success: bool,
    /// stdout as JSON (`Null` when empty).
    pub json: Value,
    /// stderr, for messages.
    pub stderr: String,
}

impl Reply {
    /// The error object's `code`, when the call failed with one.
    pub fn code(&self) -> Option<u64> {
        self.json.get("code").and_then(Value::as_u64)
    }
}

/// How long one plugin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `plugin` inside `node` with exactly `vars` (plus `PATH`) and
/// `stdin`.
pub fn call(
    plugin: &Path,
    node: &Netns,
    vars: &[(&str, &str)],
    stdin: &[u8],
) -> Result<Reply, Error> {
    let mut cmd = node.command(plugin)?;
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = format!("{} {vars:?}", plugin.display());
    let spawn_error = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).map_err(spawn_error)?;
    }
    // A plugin stuck (on its lease lock, say) fails the test instead of
    // hanging it.
    let deadline = Instant::now() + CALL_TIMEOUT;
    while child.try_wait().map_err(spawn_error)?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", CALL_TIMEOUT.as_secs()),
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    let json = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    Ok(Reply {
        success: out.status.success(),
        json,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The plugin entries of a conflist, each with the list's `cniVersion` and
/// `name` filled in, as a runtime passes them to the plugins.
pub fn plugin_configs(conflist: &Value) -> Vec<Value> {
    let plugins = conflist
        .get("plugins")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    plugins
        .into_iter()
        .map(|mut plugin| {
            if let Some(obj) = plugin.as_object_mut() {
                for key in ["cniVersion", "name"] {
                    if let Some(v) = conflist.get(key) {
                        obj.insert(key.to_string(), v.clone());
                    }
                }
            }
            plugin
        })
        .collect()
}

/// A binary built next to the running test binary (`target/<profile>/`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // Test binaries live in target/<profile>/deps/.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test` (it builds every binary first)",
        bin.display()
    );
    bin
}
