//! berth-runtime as the runc binary of containerd's `containerd-shim-runc-v2`
//! (Debian's containerd, a private instance per test): run, exec, ps,
//! pause, resume, kill and delete go through the shim exactly as in a
//! containerd node (privileged: run as root).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{busybox_rootfs, Bed};

/// A containerd of the test's own: config, root, state and socket under
/// the bed; killed on drop.
struct Containerd {
    child: Child,
    socket: PathBuf,
    namespace: String,
}

impl Containerd {
    fn start(bed: &Bed) -> Self {
        let dir = bed.dir.join("containerd");
        std::fs::create_dir_all(&dir).expect("containerd dir");
        let socket = dir.join("sock");
        let config = format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
            dir.display(),
            socket.display()
        );
        std::fs::write(dir.join("config.toml"), config).expect("config.toml");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .spawn()
            .expect("containerd (Debian package containerd) is installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            socket,
            namespace: bed.prefix.clone(),
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("ctr")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The runc root the shim gives the runtime for this namespace.
    fn runtime_root(&self) -> PathBuf {
        Path::new("/run/containerd/runc").join(&self.namespace)
    }

    /// The ids berth-runtime lists under the shim's root.
    fn runtime_list(&self) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_berth-runtime"))
            .arg("--root")
            .arg(self.runtime_root())
            .args(["list", "-q"])
            .output()
            .expect("berth-runtime list");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let tasks = self.ok(&["task", "ls"]);
            if tasks
                .lines()
                .any(|l| l.starts_with(id) && l.contains(status))
            {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never {status}: {tasks}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for pid in shims(&self.namespace) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.runtime_root());
        for dir in fifo_dirs(&self.namespace) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Shim processes serving `namespace`.
fn shims(namespace: &str) -> Vec<i32> {
    let needle = format!("-namespace\0{namespace}\0");
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The directories ctr made under /run/containerd/fifo for this test's
/// containers (their files are named `<id>-stdout` and so on; the ids
/// start with the test's prefix).
fn fifo_dirs(prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/run/containerd/fifo")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|dir| {
                    std::fs::read_dir(dir).is_ok_and(|mut files| {
                        files.any(|f| {
                            f.is_ok_and(|f| f.file_name().to_string_lossy().starts_with(prefix))
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn containerd_shim_runc_v2_drives_berth_runtime() {
    let bed = Bed::new("shim");
    let runtime = env!("CARGO_BIN_EXE_berth-runtime");
    let rootfs = bed.dir.join("busybox");
    busybox_rootfs(&rootfs);
    let layout = bed.pack("busybox:latest", &[&rootfs]);
    let archive = bed.dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .expect("tar");
    assert!(status.success());

    let containerd = Containerd::start(&bed);
    // Ids carry the test's prefix: ctr names its FIFOs after them.
    let once = format!("{}-once", bed.prefix);
    let long = format!("{}-long", bed.prefix);
    containerd.ok(&["images", "import", archive.to_str().expect("path")]);

    // Foreground: output and exit code come back through the shim.
    let out = containerd.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        runtime,
        "busybox:latest",
        &once,
        "sh",
        "-c",
        "echo hello-from-shim; exit 3",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-shim"
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Detached: the task is berth-runtime's container, under the shim's root.
    containerd.ok(&[
        "run",
        "-d",
        "--runc-binary",
        runtime,
        "busybox:latest",
        &long,
        "sleep",
        "1000",
    ]);
    let listed = containerd.runtime_list();
    assert_eq!(listed.trim(), long);

    let out = containerd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &long,
        "sh",
        "-c",
        "echo exec-ok; exit 4",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "exec-ok");
    assert_eq!(out.status.code(), Some(4));

    let pid = containerd
        .ok(&["task", "ls"])
        .lines()
        .find(|l| l.starts_with(&long))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .expect("task pid");
    assert!(
        containerd.ok(&["task", "ps", &long]).contains(&pid),
        "ps lists the init"
    );

    containerd.ok(&["task", "pause", &long]);
    containerd.wait_status(&long, "PAUSED");
    containerd.ok(&["task", "resume", &long]);
    containerd.wait_status(&long, "RUNNING");
    containerd.ok(&["task", "kill", "--signal", "SIGKILL", &long]);
    containerd.wait_status(&long, "STOPPED");
    containerd.ok(&["task", "delete", &long]);
    containerd.ok(&["container", "delete", &long]);
    let listed = containerd.runtime_list();
    assert!(listed.trim().is_empty(), "{listed}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shims(&bed.prefix).is_empty() {
        assert!(Instant::now() < deadline, "the shims did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fifos = fifo_dirs(&bed.prefix);
    drop(containerd);
    assert!(
        fifos.iter().all(|d| !d.exists()),
        "ctr's FIFOs are removed with the test: {fifos:?}"
    );
    bed.finish();
}
