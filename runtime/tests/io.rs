//! What callers hand a container besides its bundle: a console socket for
//! a terminal, extra file descriptors, a user namespace (privileged).

mod common;

use std::io::{IoSliceMut, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Bed;
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};

#[test]
fn a_terminal_comes_through_the_console_socket() {
    let bed = Bed::new("tty");
    let bundle = bed.bundle(
        "b",
        &["sh", "-c", "tty; echo hello-tty; sleep 1000"],
        |doc| {
            doc["process"]["terminal"] = true.into();
        },
    );
    let socket = bed.dir.join("console.sock");
    let listener = UnixListener::bind(&socket).expect("bind the console socket");
    let mut create = bed
        .cmd()
        .args([
            "create",
            "--bundle",
            bundle.to_str().expect("path"),
            "--console-socket",
        ])
        .arg(&socket)
        .arg("t1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("create");
    let (conn, _) = listener.accept().expect("the runtime connects");
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        std::os::fd::AsRawFd::as_raw_fd(&conn),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .expect("recvmsg");
    let fd = msg
        .cmsgs()
        .expect("control messages")
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("a file descriptor");
    // SAFETY: the descriptor was just received and is owned by nobody else.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    assert!(create.wait().expect("create").success());
    bed.ok(&["start", "t1"]);

    let mut master = std::fs::File::from(master);
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("hello-tty") && Instant::now() < deadline {
        let mut chunk = [0u8; 256];
        match master.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
        }
    }
    assert!(
        seen.contains("/dev/pts/"),
        "the program's stdin is a terminal: {seen:?}"
    );
    assert!(seen.contains("hello-tty"), "{seen:?}");
    bed.ok(&["delete", "--force", "t1"]);
    bed.finish();
}

#[test]
fn preserved_file_descriptors_reach_the_container() {
    let bed = Bed::new("fds");
    let bundle = bed.bundle("b", &["sh", "-c", "cat <&3"], |_| {});
    let file = bed.dir.join("handed-over");
    std::fs::write(&file, "through fd 3\n").expect("file");
    let out = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3<"$1"; shift; exec "$@""#)
        .arg("sh")
        .arg(&file)
        .arg(env!("CARGO_BIN_EXE_berth-runtime"))
        .arg("--root")
        .arg(&bed.root)
        .args([
            "--cgroup-parent",
            &bed.prefix,
            "run",
            "--preserve-fds",
            "1",
            "--bundle",
        ])
        .arg(&bundle)
        .arg("f1")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through fd 3\n");
    bed.finish();
}

#[test]
fn a_user_namespace_maps_root_to_an_unprivileged_range() {
    let bed = Bed::new("userns");
    let bundle = bed.bundle("b", &["sh", "-c", "id -u; cat /proc/self/uid_map"], |doc| {
        doc["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces")
            .push(serde_json::json!({"type": "user"}));
        let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        doc["linux"]["uidMappings"] = map.clone();
        doc["linux"]["gidMappings"] = map;
    });
    let out = bed.run(&["run", "--bundle", bundle.to_str().expect("path"), "u1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0"], "root inside: {text}");
    assert_eq!(
        lines[1],
        ["0", "100000", "65536"],
        "an unprivileged range outside: {text}"
    );
    bed.finish();
}
