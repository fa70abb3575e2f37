//! The runtime's privileged test bed: a state root, a cgroup parent and
//! bundles, all named with a unique prefix and removed afterwards (also
//! when a test fails), with a check that nothing of a container remains.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use berth_runtime::spec::default_spec;
use libcontainer::oci_spec::runtime::Spec;
use serde_json::Value;

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Cgroup v1 controllers and the cgroup2 mount, where container cgroups live.
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";

/// One test's runtime: its own `--root`, `--cgroup-parent` and bundles.
pub struct Bed {
    pub prefix: String,
    pub dir: PathBuf,
    pub root: PathBuf,
    finished: bool,
}

impl Bed {
    /// A new bed; panics (failing the test) when not root.
    pub fn new(name: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "runtime tests create containers: run them as root"
        );
        let prefix = format!(
            "berth-rt-{}-{}-{}",
            name,
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(&prefix);
        std::fs::create_dir_all(&dir).expect("test dir");
        Self {
            root: dir.join("state"),
            dir,
            prefix,
            finished: false,
        }
    }

    /// A `berth-runtime` command with this bed's root and cgroup parent.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth-runtime"));
        cmd.arg("--root").arg(&self.root);
        cmd.arg("--cgroup-parent").arg(&self.prefix);
        cmd
    }

    /// Runs `berth-runtime ARGS` and returns its output. Output goes
    /// through files, not pipes: a created container inherits the
    /// runtime's stdio and keeps it open long after the runtime exits.
    pub fn run(&self, args: &[&str]) -> Output {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let out_path = self.dir.join(format!("out-{n}"));
        let err_path = self.dir.join(format!("err-{n}"));
        let status = self
            .cmd()
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).expect("stdout file"))
            .stderr(std::fs::File::create(&err_path).expect("stderr file"))
            .status()
            .expect("run berth-runtime");
        let output = Output {
            status,
            stdout: std::fs::read(&out_path).expect("stdout"),
            stderr: std::fs::read(&err_path).expect("stderr"),
        };
        let _ = std::fs::remove_file(out_path);
        let _ = std::fs::remove_file(err_path);
        output
    }

    /// Runs `berth-runtime ARGS`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "berth-runtime {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `berth-runtime ARGS`, which must fail; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "berth-runtime {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A bundle `name` with a busybox root filesystem and the default
    /// configuration running `args`, changed by `edit`.
    pub fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let bundle = self.dir.join(name);
        busybox_rootfs(&bundle.join("rootfs"));
        let spec: Spec = default_spec().expect("default spec");
        let mut doc = serde_json::to_value(&spec).expect("spec json");
        doc["process"]["args"] = args.iter().map(|a| Value::from(*a)).collect();
        edit(&mut doc);
        std::fs::write(bundle.join("config.json"), doc.to_string()).expect("write config.json");
        bundle
    }

    /// Creates and starts container `id` from `bundle` (`run --detach`).
    pub fn detached(&self, bundle: &Path, id: &str) {
        self.ok(&[
            "run",
            "--detach",
            "--bundle",
            &bundle.display().to_string(),
            id,
        ]);
    }

    /// Packs `layers` (bottom first) as image `name` into the layout
    /// `<dir>/layout` with `berth-runtime image pack`; returns the layout.
    pub fn pack(&self, name: &str, layers: &[&Path]) -> PathBuf {
        let layout = self.dir.join("layout");
        let out = layout.display().to_string();
        let mut args = vec![
            "image",
            "pack",
            "--name",
            name,
            "--cmd",
            "sh",
            "--env",
            "PATH=/bin",
            "--out",
            &out,
        ];
        let layers: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
        args.extend(layers.iter().map(String::as_str));
        self.ok(&args);
        layout
    }

    /// The container's state as `berth-runtime state` prints it.
    pub fn state(&self, id: &str) -> Value {
        serde_json::from_str(&self.ok(&["state", id])).expect("state is JSON")
    }

    /// Waits until the container's status is `status`.
    pub fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.state(id);
            if state["status"] == status {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {status}: {state}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every trace of this bed's containers: state directories, cgroups.
    pub fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            // Nothing at all, not even an empty `.berth`: a runtime's root
            // is empty when no container exists.
            found.extend(entries.flatten().map(|e| e.path().display().to_string()));
        }
        for hierarchy in cgroup_hierarchies() {
            let parent = hierarchy.join(&self.prefix);
            if let Ok(entries) = std::fs::read_dir(&parent) {
                found.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                        .map(|e| e.path().display().to_string()),
                );
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        found.extend(
            mounts
                .lines()
                .filter(|l| l.contains(&self.prefix))
                .map(|l| format!("mount: {l}")),
        );
        found
    }

    /// Asserts that nothing of the bed's containers remains, then removes the bed.
    pub fn finish(mut self) {
        let left = self.leftovers();
        self.clean();
        self.finished = true;
        assert!(left.is_empty(), "left behind: {left:#?}");
    }

    fn clean(&self) {
        // Never panics: this also runs while a failed test unwinds.
        let list = self.dir.join("cleanup-list");
        let listed = std::fs::File::create(&list).ok().and_then(|file| {
            self.cmd()
                .args(["list", "-q"])
                .stdout(file)
                .stderr(Stdio::null())
                .status()
                .ok()
        });
        if listed.is_some() {
            for id in std::fs::read_to_string(&list).unwrap_or_default().lines() {
                let _ = self
                    .cmd()
                    .args(["delete", "--force", id])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // Root filesystems a failed test left mounted.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mount_point in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if Path::new(mount_point).starts_with(&self.dir) {
                let _ = nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        for hierarchy in cgroup_hierarchies() {
            let parent = hierarchy.join(&self.prefix);
            if let Ok(entries) = std::fs::read_dir(&parent) {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        kill_cgroup(&e.path());
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        if !self.finished {
            self.clean();
        }
    }
}

fn kill_cgroup(path: &Path) {
    // A frozen (paused) process cannot die.
    let _ = std::fs::write(path.join("freezer.state"), "THAWED");
    let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(50));
}

/// The directories of every mounted cgroup hierarchy (v1 controllers and
/// the cgroup2 mount).
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(CGROUP_MOUNTS) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                dirs.push(e.path());
            }
        }
    }
    dirs.push(PathBuf::from(CGROUP_MOUNTS));
    dirs
}

/// A root filesystem: busybox-static and links for its applets.
pub fn busybox_rootfs(rootfs: &Path) {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs/bin");
    for dir in ["proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static is installed");
    let out = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
}

/// Reads a pid file.
pub fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid file holds a pid")
}

/// A file of the container's cgroup: `v1_file` in the v1 `controller`
/// hierarchy, or `v2_file` on a cgroup2-only machine.
pub fn cgroup_file(bed: &Bed, id: &str, controller: &str, v1_file: &str, v2_file: &str) -> String {
    let v1 = Path::new(CGROUP_MOUNTS)
        .join(controller)
        .join(&bed.prefix)
        .join(id)
        .join(v1_file);
    let path = if v1.exists() {
        v1
    } else {
        Path::new(CGROUP_MOUNTS)
            .join(&bed.prefix)
            .join(id)
            .join(v2_file)
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The static `berth-pause`, built for the tests (a target triple of its
/// own keeps the static flags away from the rest of the build).
pub fn pause_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace")
                .to_owned();
            // The build's target directory (`CARGO_TARGET_DIR` or
            // `target/`): this test runs from `<target>/<profile>/deps/`.
            let exe = std::env::current_exe().expect("test executable");
            let target = exe.ancestors().nth(3).expect("target directory").to_owned();
            let status = Command::new(env!("CARGO"))
                .current_dir(&workspace)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "berth-pause",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                    "--target-dir",
                ])
                .arg(&target)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .status()
                .expect("run cargo");
            assert!(status.success(), "building the static berth-pause failed");
            target.join("x86_64-unknown-linux-gnu/release/berth-pause")
        })
        .clone()
}
