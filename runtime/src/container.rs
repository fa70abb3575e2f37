//! Containers under one state root, with runc's verbs: create, start,
//! state, list, kill, delete, pause, resume, ps, update and exec.
//!
//! libcontainer does the work; this module adds what runc's callers rely
//! on and libcontainer leaves out: the configuration is read from a copy in
//! the state directory (see [`crate::spec::prepare`]), a failed create
//! removes everything it made, and `state` reports runc's fields.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::error::LibcontainerError;
use libcontainer::oci_spec::runtime::{LinuxResources, Process, Spec};
use libcontainer::signal::Signal;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec;
use crate::stdio::StdioExecutor;

/// Where a runtime keeps its own files beside the containers' directories:
/// `<root>/.berth/<id>/` holds the configuration libcontainer reads and the
/// path of the caller's bundle.
const PRIVATE_DIR: &str = ".berth";

/// The containers under one state root (runc's `--root`).
#[derive(Debug, Clone)]
pub struct Runtime {
    root: PathBuf,
    cgroup_parent: PathBuf,
}

/// How `create` (and `run`) makes a container.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// The bundle: a directory with `config.json` and the root filesystem.
    pub bundle: PathBuf,
    /// Where to write the init process's pid.
    pub pid_file: Option<PathBuf>,
    /// A unix socket to send the pseudo-terminal's master to.
    pub console_socket: Option<PathBuf>,
    /// Use chroot-like `MS_MOVE` instead of `pivot_root` (ramdisk roots).
    pub no_pivot: bool,
    /// How many file descriptors beyond stdio (3, 4, …) the container gets.
    pub preserve_fds: i32,
}

/// How `exec` starts a process in a running container.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// A `process.json` (runtime-spec Process); when set, `args`, `env`,
    /// `cwd` and `tty` are ignored.
    pub process: Option<PathBuf>,
    /// The command and its arguments.
    pub args: Vec<String>,
    /// `KEY=value` pairs added to the container's environment.
    pub env: Vec<String>,
    /// The working directory (default: the container's).
    pub cwd: Option<PathBuf>,
    /// Give the process a pseudo-terminal (needs `console_socket` when detached).
    pub tty: bool,
    /// Return once the process runs instead of waiting for it.
    pub detach: bool,
    /// Where to write the process's pid.
    pub pid_file: Option<PathBuf>,
    /// A unix socket to send the pseudo-terminal's master to.
    pub console_socket: Option<PathBuf>,
    /// How many file descriptors beyond stdio the process gets.
    pub preserve_fds: i32,
}

/// A container's state as `runc state` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The runtime-spec version of the container's configuration.
    pub oci_version: String,
    /// The container's id.
    pub id: String,
    /// The init process's pid; 0 once it has stopped.
    pub pid: i32,
    /// `creating`, `created`, `running`, `paused` or `stopped`.
    pub status: String,
    /// The bundle the container was created from.
    pub bundle: PathBuf,
    /// The root filesystem.
    pub rootfs: PathBuf,
    /// When the container was created (RFC 3339).
    pub created: String,
    /// The configuration's annotations.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
    /// The user who created the container.
    pub owner: String,
}

impl Runtime {
    /// A runtime keeping state under `root` (made if missing, mode 0700)
    /// and giving containers without a `cgroupsPath` the cgroup
    /// `/<cgroup_parent>/<id>`.
    pub fn new(root: impl Into<PathBuf>, cgroup_parent: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(Error::io(&root))?;
        let root = fs::canonicalize(&root).map_err(Error::io(&root))?;
        Ok(Self {
            root,
            cgroup_parent: cgroup_parent.into(),
        })
    }

    /// The state root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates container `id` from a bundle: namespaces, cgroups, mounts
    /// and the init process, which waits for `start`. Returns once the
    /// container is `created` (and its pid file written) with the init
    /// process's pid. On failure nothing of it remains.
    pub fn create(&self, id: &str, opts: &CreateOptions) -> Result<i32> {
        self.create_with(id, opts, true)
    }

    /// [`Runtime::create`], with `detach` telling libcontainer whether the
    /// caller returns (create) or stays and waits for the container (run).
    pub fn create_with(&self, id: &str, opts: &CreateOptions, detach: bool) -> Result<i32> {
        validate_id(id)?;
        if self.container_dir(id).exists() {
            return Err(Error::Exists(id.to_owned()));
        }
        if !opts.bundle.is_dir() {
            return Err(Error::NoBundle(opts.bundle.clone()));
        }
        let bundle = fs::canonicalize(&opts.bundle).map_err(Error::io(&opts.bundle))?;
        let mut spec = spec::load_bundle_spec(&bundle)?;
        spec::prepare(&mut spec, &bundle, &self.cgroup_parent, id)?;
        let private = self.private_dir(id);
        let made = self
            .write_private(&private, &spec, &bundle)
            .and_then(|()| self.build(id, opts, &private, detach))
            .and_then(|pid| self.disable_oom_killer(id, &spec).map(|()| pid));
        made.map_err(|error| match self.remove_leftovers(id, &spec) {
            Ok(()) => error,
            Err(cleanup) => Error::Cleanup {
                error: Box::new(error),
                cleanup: Box::new(cleanup),
            },
        })
    }

    fn write_private(&self, private: &Path, spec: &Spec, bundle: &Path) -> Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(private)
            .map_err(Error::io(private))?;
        let config = private.join("config.json");
        let text = serde_json::to_vec(spec).map_err(|source| Error::Json {
            what: config.display().to_string(),
            source,
        })?;
        fs::write(&config, text).map_err(Error::io(&config))?;
        let origin = private.join("bundle");
        fs::write(&origin, bundle.as_os_str().as_encoded_bytes()).map_err(Error::io(&origin))
    }

    fn build(&self, id: &str, opts: &CreateOptions, private: &Path, detach: bool) -> Result<i32> {
        let container = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_executor(StdioExecutor)
            .with_root_path(&self.root)?
            .with_pid_file(opts.pid_file.as_ref())?
            .with_console_socket(opts.console_socket.as_ref())
            .with_preserved_fds(opts.preserve_fds)
            .as_init(private)
            .with_systemd(false)
            .with_detach(detach)
            .with_no_pivot(opts.no_pivot)
            .build()?;
        container
            .pid()
            .map(|p| p.as_raw())
            .ok_or(Error::Unsupported(
                "a created container without an init process",
            ))
    }

    /// Applies `linux.resources.memory.disableOOMKiller`, which libcontainer
    /// never passes to its cgroup manager: through the container's manager
    /// (cgroup v1's `memory.oom_control`; cgroup v2 has no such switch, and
    /// the request is ignored with a warning, as runc does).
    fn disable_oom_killer(&self, id: &str, spec: &Spec) -> Result<()> {
        let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
            return Ok(());
        };
        if !disables_oom_killer(resources) {
            return Ok(());
        }
        let container = self.load(id)?;
        let manager = cgroup_manager(&container)?;
        if !Path::new("/sys/fs/cgroup/memory").is_dir() {
            tracing::warn!(id, "disableOOMKiller has no effect on cgroup v2");
            return Ok(());
        }
        manager.apply(&ControllerOpt {
            resources,
            disable_oom_killer: true,
            oom_score_adj: None,
            freezer_state: None,
        })?;
        Ok(())
    }

    /// Removes what a failed create left: libcontainer's directory (and
    /// through it the cgroups), the cgroup itself if it was made before the
    /// state was saved, and the private directory.
    fn remove_leftovers(&self, id: &str, spec: &Spec) -> Result<()> {
        let dir = self.container_dir(id);
        if dir.exists() {
            match Container::load(dir.clone()) {
                Ok(mut container) => {
                    if let Err(e) = container.delete(true) {
                        tracing::warn!(id, error = %e, "removing the half-made container");
                    }
                }
                Err(e) => tracing::debug!(id, error = %e, "no state saved yet"),
            }
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
            }
        }
        if let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) {
            remove_cgroup(id, &path)?;
        }
        self.remove_private(id)
    }

    /// Removes container `id`'s private directory, and the directory of
    /// private directories once it is empty: a state root holds nothing
    /// when no container exists.
    fn remove_private(&self, id: &str) -> Result<()> {
        let private = self.private_dir(id);
        if private.exists() {
            fs::remove_dir_all(&private).map_err(Error::io(&private))?;
        }
        let parent = self.root.join(PRIVATE_DIR);
        match fs::remove_dir(&parent) {
            Ok(()) => Ok(()),
            // Another container's, or already gone.
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
            {
                Ok(())
            }
            Err(e) => Err(Error::io(&parent)(e)),
        }
    }

    /// Runs the user's program in a created container.
    pub fn start(&self, id: &str) -> Result<()> {
        let mut container = self.load(id)?;
        if !container.can_start() {
            return Err(wrong_status(&container, "start"));
        }
        container.start()?;
        Ok(())
    }

    /// The container's state, as `runc state` reports it.
    pub fn state(&self, id: &str) -> Result<State> {
        let container = self.load(id)?;
        self.describe(&container)
    }

    /// Every container under the root, sorted by id.
    pub fn list(&self) -> Result<Vec<State>> {
        let mut states = Vec::new();
        let entries = fs::read_dir(&self.root).map_err(Error::io(&self.root))?;
        for entry in entries {
            let entry = entry.map_err(Error::io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.path().join("state.json").exists() {
                continue;
            }
            match self.state(&name) {
                Ok(state) => states.push(state),
                // Deleted between the listing and the read.
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        states.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(states)
    }

    /// Sends a signal (a name such as `TERM`/`SIGTERM` or a number) to the
    /// init process, or with `all` to every process of the container.
    pub fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        let signal = parse_signal(signal)?;
        let mut container = self.load(id)?;
        // With --all, the remaining processes of a stopped container too.
        let stopped_all = all && container.status() == ContainerStatus::Stopped;
        if !(container.can_kill() || stopped_all) {
            return Err(wrong_status(&container, "kill"));
        }
        container.kill(signal, all)?;
        Ok(())
    }

    /// Deletes a stopped (or, with `force`, any) container: its processes,
    /// cgroups and state. Deleting a container that does not exist is an
    /// error, except with `force`.
    pub fn delete(&self, id: &str, force: bool) -> Result<()> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        let private = self.private_dir(id);
        if !dir.join("state.json").exists() {
            // An aborted create can leave a directory without state.
            let existed = dir.exists() || private.exists();
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
            }
            self.remove_private(id)?;
            return if existed || force {
                Ok(())
            } else {
                Err(Error::NotFound(id.to_owned()))
            };
        }
        let mut container = self.load(id)?;
        if !force
            && !matches!(
                container.status(),
                ContainerStatus::Stopped | ContainerStatus::Created
            )
        {
            return Err(wrong_status(&container, "delete"));
        }
        container.delete(force)?;
        self.remove_private(id)
    }

    /// Freezes every process of a running container.
    pub fn pause(&self, id: &str) -> Result<()> {
        let mut container = self.load(id)?;
        if !container.can_pause() {
            return Err(wrong_status(&container, "pause"));
        }
        container.pause()?;
        Ok(())
    }

    /// Thaws a paused container.
    pub fn resume(&self, id: &str) -> Result<()> {
        let mut container = self.load(id)?;
        if !container.can_resume() {
            return Err(wrong_status(&container, "resume"));
        }
        container.resume()?;
        Ok(())
    }

    /// The pids of every process in the container's cgroup.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>> {
        let container = self.load(id)?;
        let manager = cgroup_manager(&container)?;
        let mut pids: Vec<i32> = manager.get_all_pids()?.iter().map(|p| p.as_raw()).collect();
        pids.sort_unstable();
        Ok(pids)
    }

    /// Changes the resource limits of a running container.
    pub fn update(&self, id: &str, resources: &LinuxResources) -> Result<()> {
        let container = self.load(id)?;
        if container.status() == ContainerStatus::Stopped {
            return Err(wrong_status(&container, "update"));
        }
        let manager = cgroup_manager(&container)?;
        manager.apply(&ControllerOpt {
            resources,
            disable_oom_killer: disables_oom_killer(resources),
            oom_score_adj: None,
            freezer_state: None,
        })?;
        Ok(())
    }

    /// Starts a process in a running container; returns its pid (the
    /// caller waits for it unless `detach`).
    pub fn exec(&self, id: &str, opts: &ExecOptions) -> Result<i32> {
        let container = self.load(id)?;
        if container.status() != ContainerStatus::Running {
            return Err(wrong_status(&container, "exec in"));
        }
        let process_file = match &opts.process {
            Some(path) => {
                // Read once here, so a bad file is reported with its name.
                let text = fs::read_to_string(path).map_err(Error::io(path))?;
                serde_json::from_str::<Process>(&text).map_err(|source| Error::Json {
                    what: path.display().to_string(),
                    source,
                })?;
                path.clone()
            }
            None => self.write_exec_process(&container, opts)?,
        };
        let built = ContainerBuilder::new(id.to_owned(), SyscallType::default())
            .with_executor(StdioExecutor)
            .with_root_path(&self.root)
            .and_then(|b| b.with_pid_file(opts.pid_file.as_ref()))
            .map(|b| {
                b.with_console_socket(opts.console_socket.as_ref())
                    .with_preserved_fds(opts.preserve_fds)
                    .as_tenant()
                    .with_detach(opts.detach)
                    .with_process(Some(&process_file))
                    .build()
            });
        if opts.process.is_none() {
            if let Err(e) = fs::remove_file(&process_file) {
                tracing::warn!(path = %process_file.display(), error = %e, "removing the exec process file");
            }
        }
        Ok(built??.as_raw())
    }

    /// The process description for an exec given as arguments: the
    /// container's own process (user, capabilities, limits, environment)
    /// with the new command, extra environment, directory and terminal.
    fn write_exec_process(&self, container: &Container, opts: &ExecOptions) -> Result<PathBuf> {
        if opts.args.is_empty() {
            return Err(Error::Unsupported(
                "exec without a command (give args or --process)",
            ));
        }
        let config = self.private_dir(container.id()).join("config.json");
        let text = fs::read_to_string(&config).map_err(Error::io(&config))?;
        let spec: Spec = serde_json::from_str(&text).map_err(|source| Error::Json {
            what: config.display().to_string(),
            source,
        })?;
        let mut process = spec.process().clone().unwrap_or_default();
        process.set_args(Some(opts.args.clone()));
        let mut env = process.env().clone().unwrap_or_default();
        for pair in &opts.env {
            let key = pair.split('=').next().unwrap_or(pair);
            env.retain(|e| e.split('=').next() != Some(key));
            env.push(pair.clone());
        }
        process.set_env(Some(env));
        if let Some(cwd) = &opts.cwd {
            process.set_cwd(cwd.clone());
        }
        process.set_terminal(Some(opts.tty));
        let path = self
            .private_dir(container.id())
            .join(format!("exec-{}.json", std::process::id()));
        let text = serde_json::to_vec(&process).map_err(|source| Error::Json {
            what: path.display().to_string(),
            source,
        })?;
        fs::write(&path, text).map_err(Error::io(&path))?;
        Ok(path)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    fn private_dir(&self, id: &str) -> PathBuf {
        self.root.join(PRIVATE_DIR).join(id)
    }

    fn load(&self, id: &str) -> Result<Container> {
        validate_id(id)?;
        let dir = self.container_dir(id);
        if !dir.join("state.json").exists() {
            return Err(Error::NotFound(id.to_owned()));
        }
        Ok(Container::load(dir)?)
    }

    fn describe(&self, container: &Container) -> Result<State> {
        let private = self.private_dir(container.id());
        let bundle = fs::read(private.join("bundle"))
            .map(|b| PathBuf::from(String::from_utf8_lossy(&b).into_owned()))
            .unwrap_or_else(|_| container.bundle().clone());
        let spec: Option<Spec> = fs::read_to_string(private.join("config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let status = container.status();
        Ok(State {
            oci_version: spec
                .as_ref()
                .map(|s| s.version().clone())
                .unwrap_or_else(|| "1.0.2".to_owned()),
            id: container.id().to_owned(),
            pid: match status {
                ContainerStatus::Stopped => 0,
                _ => container.pid().map(|p| p.as_raw()).unwrap_or(0),
            },
            status: status_name(status).to_owned(),
            bundle,
            rootfs: spec
                .as_ref()
                .and_then(|s| s.root().as_ref().map(|r| r.path().clone()))
                .unwrap_or_default(),
            created: container
                .created()
                .and_then(|c| serde_json::to_value(c).ok())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            annotations: container.state.annotations.clone().unwrap_or_default(),
            owner: container
                .state
                .creator
                .and_then(|uid| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok())
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default(),
        })
    }
}

/// The lower-case status names of the runtime spec.
pub fn status_name(status: ContainerStatus) -> &'static str {
    match status {
        ContainerStatus::Creating => "creating",
        ContainerStatus::Created => "created",
        ContainerStatus::Running => "running",
        ContainerStatus::Stopped => "stopped",
        ContainerStatus::Paused => "paused",
    }
}

fn validate_id(id: &str) -> Result<()> {
    ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .validate_id()
        .map(drop)
        .map_err(|e| match e {
            LibcontainerError::InvalidID(source) => Error::InvalidId {
                id: id.to_owned(),
                source,
            },
            other => Error::Container(other),
        })
}

fn parse_signal(signal: &str) -> Result<Signal> {
    Signal::try_from(signal).map_err(|_| Error::Signal(signal.to_owned()))
}

fn wrong_status(container: &Container, op: &'static str) -> Error {
    Error::WrongStatus {
        id: container.id().to_owned(),
        status: status_name(container.status()),
        op,
    }
}

fn cgroup_manager(container: &Container) -> Result<libcgroups::common::AnyCgroupManager> {
    Ok(libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: container.spec()?.cgroup_path,
        systemd_cgroup: false,
        container_name: container.id().to_owned(),
    })?)
}

/// Removes a container's cgroup (every hierarchy) if it exists.
/// Whether `resources` ask for the OOM killer to leave the container alone.
fn disables_oom_killer(resources: &LinuxResources) -> bool {
    resources
        .memory()
        .as_ref()
        .and_then(|m| m.disable_oom_killer())
        .unwrap_or(false)
}

fn remove_cgroup(id: &str, path: &Path) -> Result<()> {
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: path.to_owned(),
        systemd_cgroup: false,
        container_name: id.to_owned(),
    })?;
    manager.remove()?;
    Ok(())
}
