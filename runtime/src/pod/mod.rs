//! Pods for the agent: a sandbox holding the pod's network, IPC and UTS
//! namespaces, and app containers from images that join them.
//!
//! Everything goes through the `berth-runtime` binary, one process per
//! call, because libcontainer must not fork inside the agent's async,
//! multi-threaded process; the calls block, so an async caller runs them
//! on a blocking thread. Root filesystems come from the [`ImageStore`].
//!
//! - The sandbox is a container running the static `berth-pause` as pid 1
//!   on a shared, read-only root filesystem holding only that program; its
//!   id is the pod's name, and its namespaces are reached as
//!   `/proc/<pause pid>/ns/{net,ipc,uts,pid}` (the network one is what a
//!   CNI plugin gets as `CNI_NETNS`), with `lo` up.
//! - An app container's id is `<pod>.<name>`; its output goes to
//!   `<pods dir>/<pod>/<name>.log`.
//! - [`Pods::stop`] sends SIGTERM to every app container, SIGKILL to what
//!   still runs after the grace period, deletes them, unmounts their root
//!   filesystems, then stops the sandbox and removes the pod's directory.

mod loopback;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::container::State;
use crate::image::{ImageError, ImageStore};
use crate::spec::default_spec;

/// The name of the pause program inside the sandbox's root filesystem.
const PAUSE: &str = "berth-pause";

/// How often a stopping container's state is read.
const POLL: Duration = Duration::from_millis(20);

/// What pod operations fail with.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// `berth-runtime` could not be run or reported a failure.
    #[error("berth-runtime {args}: {message}")]
    Runtime { args: String, message: String },
    /// A file of the pod could not be written or removed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The image store failed.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A pod or container name that cannot form a container id.
    #[error("invalid name {0:?}: use letters, digits, '-' and '_'")]
    InvalidName(String),
    /// The pod has no running sandbox.
    #[error("pod {0:?} has no running sandbox")]
    NoSandbox(String),
    /// A container did not stop even after SIGKILL.
    #[error("container {0:?} did not stop")]
    DidNotStop(String),
}

/// Where pods live and which programs run them.
#[derive(Debug, Clone)]
pub struct PodConfig {
    /// The `berth-runtime` binary.
    pub runtime: PathBuf,
    /// Its `--root`.
    pub root: PathBuf,
    /// Its `--cgroup-parent`.
    pub cgroup_parent: String,
    /// The image store.
    pub images: PathBuf,
    /// Bundles and logs of pods: `<pods>/<pod>/…`.
    pub pods: PathBuf,
    /// The static `berth-pause` binary.
    pub pause: PathBuf,
}

/// An app container to add to a pod.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Its name in the pod.
    pub name: String,
    /// The image it runs, as imported into the store.
    pub image: String,
    /// The command, replacing the image's entrypoint and command when not empty.
    pub command: Vec<String>,
    /// `KEY=value` pairs added to the image's environment.
    pub env: Vec<String>,
    /// Memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// Join the sandbox's pid namespace (its pause reaps orphans).
    pub share_pid_namespace: bool,
}

/// A running sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The pod's name (the sandbox container's id).
    pub pod: String,
    /// The pause process's pid.
    pub pid: i32,
}

impl Sandbox {
    /// The path of one of the sandbox's namespaces (`net`, `ipc`, `uts`, `pid`).
    pub fn namespace(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.pid))
    }
}

/// Pods run through `berth-runtime`.
#[derive(Debug, Clone)]
pub struct Pods {
    config: PodConfig,
}

impl Pods {
    /// Pods with this configuration.
    pub fn new(config: PodConfig) -> Self {
        Self { config }
    }

    /// Starts pod `pod`'s sandbox with `hostname`.
    pub fn run_sandbox(&self, pod: &str, hostname: &str) -> Result<Sandbox, PodError> {
        check_name(pod)?;
        let rootfs = self.pause_rootfs()?;
        let mut spec = spec_json()?;
        spec["process"]["args"] = json!([format!("/{PAUSE}")]);
        spec["hostname"] = json!(hostname);
        spec["root"] = json!({"path": rootfs, "readonly": true});
        let bundle = self.pod_dir(pod).join("sandbox");
        self.write_bundle(&bundle, &spec)?;
        let log = self.pod_dir(pod).join("sandbox.log");
        self.create_and_start(pod, &bundle, &log)?;
        let sandbox = Sandbox {
            pod: pod.to_owned(),
            pid: self.state(pod)?.pid,
        };
        let netns = sandbox.namespace("net");
        if let Err(source) = loopback::bring_up(&netns) {
            if let Err(cleanup) = self.runtime(&["delete", "--force", pod]) {
                tracing::warn!(pod, error = %cleanup, "removing a sandbox without loopback");
            }
            return Err(PodError::Io {
                path: netns,
                source,
            });
        }
        Ok(sandbox)
    }

    /// Adds app container `spec.name` to a pod whose sandbox runs: a root
    /// filesystem from the image, the sandbox's network, IPC and UTS
    /// namespaces, and the image's command and environment.
    pub fn add_container(&self, pod: &str, spec: &ContainerSpec) -> Result<String, PodError> {
        check_name(&spec.name)?;
        let sandbox = self.state(pod)?;
        if sandbox.status != "running" {
            return Err(PodError::NoSandbox(pod.to_owned()));
        }
        let sandbox = Sandbox {
            pod: pod.to_owned(),
            pid: sandbox.pid,
        };
        let id = container_id(pod, &spec.name);
        let store = ImageStore::open(&self.config.images)?;
        let image = store.image(&spec.image)?;
        let rootfs = store.mount_rootfs(&id, &spec.image)?;
        let made = self
            .app_spec(&sandbox, spec, &image, &rootfs)
            .and_then(|doc| {
                let bundle = self.pod_dir(pod).join(&spec.name);
                self.write_bundle(&bundle, &doc)?;
                let log = self.pod_dir(pod).join(format!("{}.log", spec.name));
                self.create_and_start(&id, &bundle, &log)
            });
        if let Err(e) = made {
            if let Err(cleanup) = store.remove_rootfs(&id) {
                tracing::warn!(id, error = %cleanup, "removing the root filesystem of a container that did not start");
            }
            return Err(e);
        }
        Ok(id)
    }

    fn app_spec(
        &self,
        sandbox: &Sandbox,
        spec: &ContainerSpec,
        image: &crate::image::Image,
        rootfs: &Path,
    ) -> Result<Value, PodError> {
        let config = image.config.config().clone().unwrap_or_default();
        let args = if spec.command.is_empty() {
            let mut args = config.entrypoint().clone().unwrap_or_default();
            args.extend(config.cmd().clone().unwrap_or_default());
            args
        } else {
            spec.command.clone()
        };
        let mut env = config.env().clone().unwrap_or_default();
        env.extend(spec.env.iter().cloned());
        let cwd = config
            .working_dir()
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| "/".to_owned());
        let mut doc = spec_json()?;
        doc["process"]["args"] = json!(args);
        doc["process"]["env"] = json!(env);
        doc["process"]["cwd"] = json!(cwd);
        doc["root"] = json!({"path": rootfs, "readonly": false});
        // The sandbox owns the hostname.
        if let Some(obj) = doc.as_object_mut() {
            obj.remove("hostname");
        }
        let mut namespaces = vec![json!({"type": "mount"})];
        for (kind, file) in [("network", "net"), ("ipc", "ipc"), ("uts", "uts")] {
            namespaces.push(json!({"type": kind, "path": sandbox.namespace(file)}));
        }
        namespaces.push(if spec.share_pid_namespace {
            json!({"type": "pid", "path": sandbox.namespace("pid")})
        } else {
            json!({"type": "pid"})
        });
        doc["linux"]["namespaces"] = json!(namespaces);
        if let Some(limit) = spec.memory_limit {
            doc["linux"]["resources"]["memory"] = json!({"limit": limit});
        }
        Ok(doc)
    }

    /// Stops pod `pod`: SIGTERM to every app container, SIGKILL after
    /// `grace` to what still runs, then the same for the sandbox; deletes
    /// them all, unmounts the root filesystems and removes the pod's
    /// directory. Stopping a pod that is gone succeeds.
    pub fn stop(&self, pod: &str, grace: Duration) -> Result<(), PodError> {
        check_name(pod)?;
        let prefix = format!("{pod}.");
        let apps: Vec<String> = self
            .list()?
            .into_iter()
            .map(|s| s.id)
            .filter(|id| id.starts_with(&prefix))
            .collect();
        for id in &apps {
            self.signal(id, "TERM");
        }
        let deadline = Instant::now() + grace;
        for id in &apps {
            self.stop_by(id, deadline)?;
        }
        let store = ImageStore::open(&self.config.images)?;
        for id in &apps {
            self.runtime(&["delete", "--force", id])?;
            store.remove_rootfs(id)?;
        }
        if self.state(pod).is_ok() {
            self.signal(pod, "TERM");
            self.stop_by(pod, Instant::now() + grace)?;
            self.runtime(&["delete", "--force", pod])?;
        }
        let dir = self.pod_dir(pod);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(PodError::Io { path: dir, source }),
        }
    }

    /// Waits until `id` has stopped, sending SIGKILL to all its processes
    /// once `deadline` passes.
    fn stop_by(&self, id: &str, deadline: Instant) -> Result<(), PodError> {
        let mut killed_at = None;
        loop {
            match self.state(id) {
                Ok(state) if state.status != "stopped" => {}
                _ => return Ok(()),
            }
            let now = Instant::now();
            match killed_at {
                None if now >= deadline => {
                    tracing::info!(id, "grace period over: SIGKILL");
                    self.signal_all(id);
                    killed_at = Some(now);
                }
                Some(at) if now.duration_since(at) > Duration::from_secs(10) => {
                    return Err(PodError::DidNotStop(id.to_owned()));
                }
                _ => {}
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every container of every pod.
    pub fn list(&self) -> Result<Vec<State>, PodError> {
        let out = self.runtime(&["list", "--format", "json"])?;
        serde_json::from_str::<Option<Vec<State>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| PodError::Runtime {
                args: "list".to_owned(),
                message: format!("unreadable output: {e}"),
            })
    }

    /// A container's state.
    pub fn state(&self, id: &str) -> Result<State, PodError> {
        let out = self.runtime(&["state", id])?;
        serde_json::from_str(&out).map_err(|e| PodError::Runtime {
            args: format!("state {id}"),
            message: format!("unreadable output: {e}"),
        })
    }

    /// The log file of a pod's container.
    pub fn log_path(&self, pod: &str, name: &str) -> PathBuf {
        self.pod_dir(pod).join(format!("{name}.log"))
    }

    fn signal(&self, id: &str, signal: &str) {
        if let Err(e) = self.runtime(&["kill", id, signal]) {
            // Already stopped: nothing to signal.
            tracing::debug!(id, error = %e, "signal not delivered");
        }
    }

    fn signal_all(&self, id: &str) {
        if let Err(e) = self.runtime(&["kill", "--all", id, "KILL"]) {
            tracing::debug!(id, error = %e, "SIGKILL not delivered");
        }
    }

    fn create_and_start(&self, id: &str, bundle: &Path, log: &Path) -> Result<(), PodError> {
        let out = fs::File::create(log).map_err(|source| PodError::Io {
            path: log.to_owned(),
            source,
        })?;
        let err = out.try_clone().map_err(|source| PodError::Io {
            path: log.to_owned(),
            source,
        })?;
        let bundle = bundle.display().to_string();
        let args = ["create", "--bundle", bundle.as_str(), id];
        // The container inherits these: its output goes to the log.
        self.runtime_with(&args, Stdio::from(out), Stdio::from(err))?;
        if let Err(e) = self.runtime(&["start", id]) {
            if let Err(cleanup) = self.runtime(&["delete", "--force", id]) {
                tracing::warn!(id, error = %cleanup, "removing a container that did not start");
            }
            return Err(e);
        }
        Ok(())
    }

    /// Runs `berth-runtime ARGS`; returns stdout.
    fn runtime(&self, args: &[&str]) -> Result<String, PodError> {
        let out = tempfile(&self.config.pods)?;
        let stdout = out.0.try_clone().map_err(|source| PodError::Io {
            path: out.1.clone(),
            source,
        })?;
        let result = self.runtime_with(args, Stdio::from(stdout), Stdio::piped());
        let text = fs::read_to_string(&out.1).unwrap_or_default();
        if let Err(e) = fs::remove_file(&out.1) {
            tracing::debug!(path = %out.1.display(), error = %e, "removing an output file");
        }
        result.map(|()| text)
    }

    fn runtime_with(&self, args: &[&str], stdout: Stdio, stderr: Stdio) -> Result<(), PodError> {
        let log = self.config.pods.join("runtime.log");
        let output = Command::new(&self.config.runtime)
            .arg("--root")
            .arg(&self.config.root)
            .arg("--cgroup-parent")
            .arg(&self.config.cgroup_parent)
            .arg("--log")
            .arg(&log)
            .arg("--log-format")
            .arg("json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .and_then(|child| child.wait_with_output())
            .map_err(|e| PodError::Runtime {
                args: args.join(" "),
                message: format!("cannot run {}: {e}", self.config.runtime.display()),
            })?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let message = stderr
            .lines()
            .last()
            .map(|l| l.trim_start_matches("berth-runtime: ").to_owned())
            .unwrap_or_else(|| output.status.to_string());
        Err(PodError::Runtime {
            args: args.join(" "),
            message,
        })
    }

    /// The sandboxes' shared root filesystem: only `berth-pause` and the
    /// mount points the default configuration needs.
    fn pause_rootfs(&self) -> Result<PathBuf, PodError> {
        let rootfs = self.config.pods.join(".pause").join("rootfs");
        for dir in ["proc", "dev", "sys", "tmp"] {
            let path = rootfs.join(dir);
            fs::create_dir_all(&path).map_err(|source| PodError::Io { path, source })?;
        }
        let target = rootfs.join(PAUSE);
        let fresh = fs::metadata(&target).ok().map(|m| m.len())
            == fs::metadata(&self.config.pause).ok().map(|m| m.len());
        if !fresh || !target.exists() {
            let tmp = rootfs.join(format!(".{PAUSE}.tmp"));
            fs::copy(&self.config.pause, &tmp).map_err(|source| PodError::Io {
                path: self.config.pause.clone(),
                source,
            })?;
            fs::rename(&tmp, &target).map_err(|source| PodError::Io {
                path: target,
                source,
            })?;
        }
        Ok(rootfs)
    }

    fn write_bundle(&self, bundle: &Path, spec: &Value) -> Result<(), PodError> {
        fs::create_dir_all(bundle).map_err(|source| PodError::Io {
            path: bundle.to_owned(),
            source,
        })?;
        let path = bundle.join("config.json");
        fs::write(&path, spec.to_string()).map_err(|source| PodError::Io { path, source })
    }

    fn pod_dir(&self, pod: &str) -> PathBuf {
        self.config.pods.join(pod)
    }
}

/// The id of a pod's app container.
pub fn container_id(pod: &str, name: &str) -> String {
    format!("{pod}.{name}")
}

fn check_name(name: &str) -> Result<(), PodError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(PodError::InvalidName(name.to_owned()))
    }
}

fn spec_json() -> Result<Value, PodError> {
    let spec = default_spec().map_err(|e| PodError::Runtime {
        args: "spec".to_owned(),
        message: e.to_string(),
    })?;
    serde_json::to_value(&spec).map_err(|e| PodError::Runtime {
        args: "spec".to_owned(),
        message: e.to_string(),
    })
}

/// A fresh file for one call's output (a file, not a pipe: a created
/// container would hold a pipe open).
fn tempfile(dir: &Path) -> Result<(fs::File, PathBuf), PodError> {
    fs::create_dir_all(dir).map_err(|source| PodError::Io {
        path: dir.to_owned(),
        source,
    })?;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!(".out-{}-{n}", std::process::id()));
    fs::File::create(&path)
        .map(|f| (f, path.clone()))
        .map_err(|source| PodError::Io { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_form_container_ids() {
        assert!(check_name("web-1_a").is_ok());
        for bad in ["", "a.b", "../x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(container_id("pod", "app"), "pod.app");
    }
}
