//! Container lifecycle through the `berth-runtime` binary, as
//! `containerd-shim-runc-v2` drives runc (privileged: run as root).

mod common;

use std::process::Stdio;

use common::{read_pid, Bed};

#[test]
fn create_start_state_kill_delete() {
    let bed = Bed::new("life");
    let bundle = bed.bundle(
        "b",
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
        ],
        |_| {},
    );
    let pid_file = bed.dir.join("init.pid");
    bed.ok(&[
        "create",
        "--bundle",
        bundle.to_str().expect("path"),
        "--pid-file",
        pid_file.to_str().expect("path"),
        "c1",
    ]);
    let state = bed.state("c1");
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], "c1");
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["bundle"], bundle.to_str().expect("path"));
    assert_eq!(
        state["rootfs"],
        bundle.join("rootfs").to_str().expect("path")
    );
    assert_eq!(state["owner"], "root");
    assert!(
        state["created"]
            .as_str()
            .is_some_and(|c| c.starts_with("20")),
        "{state}"
    );
    let pid = read_pid(&pid_file);
    assert_eq!(state["pid"], pid);
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "init is alive"
    );

    // Only a created container starts; a running one cannot be deleted.
    bed.ok(&["start", "c1"]);
    assert_eq!(bed.state("c1")["status"], "running");
    assert!(bed.fails(&["start", "c1"]).contains("running"));
    assert!(bed.fails(&["delete", "c1"]).contains("running"));

    let list = bed.ok(&["list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_str(&list).expect("list JSON");
    assert_eq!(list[0]["id"], "c1");
    assert_eq!(list[0]["status"], "running");
    assert!(bed.ok(&["list"]).contains("c1"));

    // The default signal is SIGTERM (which the container traps).
    bed.ok(&["kill", "c1"]);
    bed.wait_status("c1", "stopped");
    assert_eq!(bed.state("c1")["pid"], 0);
    assert!(bed.fails(&["kill", "c1", "KILL"]).contains("stopped"));
    bed.ok(&["delete", "c1"]);
    assert!(bed.fails(&["state", "c1"]).contains("does not exist"));
    bed.finish();
}

#[test]
fn signals_by_number_and_to_all_processes() {
    let bed = Bed::new("sig");
    let bundle = bed.bundle("b", &["sh", "-c", "sleep 1000 & sleep 1000 & wait"], |_| {});
    bed.detached(&bundle, "c2");
    assert_eq!(bed.state("c2")["status"], "running");
    let ps: Vec<i32> =
        serde_json::from_str(&bed.ok(&["ps", "--format", "json", "c2"])).expect("ps JSON");
    assert_eq!(ps.len(), 3, "sh and two sleeps: {ps:?}");
    assert!(bed
        .fails(&["kill", "c2", "NOSUCHSIG"])
        .contains("unknown signal"));
    bed.ok(&["kill", "--all", "c2", "9"]);
    bed.wait_status("c2", "stopped");
    bed.ok(&["delete", "c2"]);
    bed.finish();
}

#[test]
fn run_returns_the_exit_code_and_writes_to_dev_null() {
    let bed = Bed::new("run");
    let bundle = bed.bundle("b", &["sh", "-c", "exit 7"], |_| {});
    let out = bed.run(&["run", "--bundle", bundle.to_str().expect("path"), "c3"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(
        bed.fails(&["state", "c3"]).contains("does not exist"),
        "run deletes after exit"
    );

    // With stdout and stderr on /dev/null, writing must not fail (libcontainer
    // reopens them read-only unless repaired).
    let bundle = bed.bundle(
        "null",
        &[
            "sh",
            "-c",
            "echo out || exit 3; echo err >&2 || exit 4; exit 0",
        ],
        |_| {},
    );
    let log = bed.dir.join("null.log");
    let status = bed
        .cmd()
        .arg("--log")
        .arg(&log)
        .args(["run", "--bundle", bundle.to_str().expect("path"), "c4"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run");
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{logged}");

    // Output reaches the caller's pipes.
    let bundle = bed.bundle(
        "echo",
        &["sh", "-c", "echo to-stdout; echo to-stderr >&2"],
        |_| {},
    );
    let out = bed.run(&["run", "--bundle", bundle.to_str().expect("path"), "c5"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "to-stdout\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("to-stderr"));
    bed.finish();
}

#[test]
fn exec_into_a_running_container() {
    let bed = Bed::new("exec");
    let bundle = bed.bundle("b", &["sleep", "1000"], |_| {});
    bed.detached(&bundle, "c6");

    let out = bed.ok(&[
        "exec",
        "--env",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "c6",
        "sh",
        "-c",
        "echo $GREETING $(pwd) $$",
    ]);
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words[..2], ["hi", "/tmp"]);
    assert_ne!(
        words[2], "1",
        "exec gets its own pid in the container's pid namespace"
    );

    let code = bed.run(&["exec", "c6", "sh", "-c", "exit 5"]).status.code();
    assert_eq!(code, Some(5));

    // A process file, detached, with a pid file, as the shim calls exec.
    let process = bed.dir.join("process.json");
    let doc = serde_json::json!({
        "terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
        "args": ["sleep", "999"], "env": ["PATH=/bin"]
    });
    std::fs::write(&process, doc.to_string()).expect("process.json");
    let pid_file = bed.dir.join("exec.pid");
    bed.ok(&[
        "exec",
        "--process",
        process.to_str().expect("path"),
        "--detach",
        "--pid-file",
        pid_file.to_str().expect("path"),
        "c6",
    ]);
    let pid = read_pid(&pid_file);
    let ps: Vec<i32> =
        serde_json::from_str(&bed.ok(&["ps", "--format", "json", "c6"])).expect("ps JSON");
    assert!(
        ps.contains(&pid),
        "exec'd process {pid} in the container's cgroup: {ps:?}"
    );

    std::fs::write(&process, "{ not json").expect("process.json");
    let err = bed.fails(&["exec", "--process", process.to_str().expect("path"), "c6"]);
    assert!(err.contains("process.json"), "{err}");
    bed.ok(&["delete", "--force", "c6"]);
    bed.finish();
}

#[test]
fn pause_resume_and_update() {
    let bed = Bed::new("pause");
    let bundle = bed.bundle("b", &["sleep", "1000"], |_| {});
    bed.detached(&bundle, "c7");
    bed.ok(&["pause", "c7"]);
    assert_eq!(bed.state("c7")["status"], "paused");
    assert!(bed.fails(&["pause", "c7"]).contains("paused"));
    bed.ok(&["resume", "c7"]);
    assert_eq!(bed.state("c7")["status"], "running");

    bed.ok(&["update", "--memory", "64m", "--pids-limit", "33", "c7"]);
    let memory = common::cgroup_file(&bed, "c7", "memory", "memory.limit_in_bytes", "memory.max");
    assert_eq!(memory.trim(), (64u64 << 20).to_string());
    let pids = common::cgroup_file(&bed, "c7", "pids", "pids.max", "pids.max");
    assert_eq!(pids.trim(), "33");

    let mut child = bed
        .cmd()
        .args(["update", "--resources", "-", "c7"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("update");
    std::io::Write::write_all(
        child.stdin.as_mut().expect("stdin"),
        br#"{"pids": {"limit": 44}}"#,
    )
    .expect("write resources");
    drop(child.stdin.take());
    assert!(child.wait().expect("update").success());
    let pids = common::cgroup_file(&bed, "c7", "pids", "pids.max", "pids.max");
    assert_eq!(pids.trim(), "44");
    bed.ok(&["delete", "--force", "c7"]);
    bed.finish();
}

#[test]
fn errors_are_logged_as_json_lines() {
    let bed = Bed::new("log");
    let log = bed.dir.join("log.json");
    let out = bed.run(&[
        "--log",
        log.to_str().expect("path"),
        "--log-format",
        "json",
        "start",
        "ghost",
    ]);
    assert!(!out.status.success());
    let text = std::fs::read_to_string(&log).expect("log written");
    let last: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a line")).expect("JSON line");
    assert_eq!(last["level"], "error");
    assert!(
        last["msg"]
            .as_str()
            .is_some_and(|m| m.contains("\"ghost\" does not exist")),
        "{last}"
    );
    assert!(
        last["time"].as_str().is_some_and(|t| t.starts_with("20")),
        "{last}"
    );

    let err = bed.fails(&["--systemd-cgroup", "list"]);
    assert!(err.contains("--systemd-cgroup is not supported"), "{err}");
    // go-runc spells booleans out; false is what a root runtime is.
    bed.ok(&["--rootless=false", "list"]);
    assert!(bed
        .fails(&["--rootless=true", "list"])
        .contains("not supported"));
    bed.finish();
}

#[test]
fn spec_and_features() {
    let bed = Bed::new("spec");
    let dir = bed.dir.join("newbundle");
    std::fs::create_dir_all(&dir).expect("dir");
    bed.ok(&["spec", "--bundle", dir.to_str().expect("path")]);
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json")).expect("config.json"),
    )
    .expect("JSON");
    assert_eq!(spec["process"]["noNewPrivileges"], true);
    assert_eq!(spec["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
    assert!(bed
        .fails(&["spec", "--bundle", dir.to_str().expect("path")])
        .contains("exists"));

    let features: serde_json::Value = serde_json::from_str(&bed.ok(&["features"])).expect("JSON");
    assert!(features["linux"]["namespaces"]
        .as_array()
        .is_some_and(|n| n.len() == 7));
    assert_eq!(features["linux"]["cgroup"]["systemd"], false);
    bed.finish();
}

#[test]
fn hooks_run_in_order_with_the_state_on_stdin() {
    let bed = Bed::new("hooks");
    let log = bed.dir.join("hooks.log");
    let hook = |name: &str| {
        // Each hook logs its name and the id and status it was given.
        serde_json::json!({
            "path": "/bin/sh",
            "args": ["sh", "-c", format!(
                "state=$(cat); id=$(echo \"$state\" | grep -o '\"id\":\"[^\"]*\"'); \
                 status=$(echo \"$state\" | grep -o '\"status\":\"[^\"]*\"'); \
                 echo \"{name} $id $status\" >> {}", log.display())],
        })
    };
    let bundle = bed.bundle("b", &["sleep", "1000"], |doc| {
        doc["hooks"] = serde_json::json!({
            "prestart": [hook("prestart")],
            "createRuntime": [hook("createRuntime")],
            "poststart": [hook("poststart")],
        });
    });
    bed.ok(&["create", "--bundle", bundle.to_str().expect("path"), "h1"]);
    let created = std::fs::read_to_string(&log).unwrap_or_default();
    bed.ok(&["start", "h1"]);
    let started = std::fs::read_to_string(&log).unwrap_or_default();
    bed.ok(&["delete", "--force", "h1"]);
    let lines: Vec<&str> = started.lines().collect();
    assert_eq!(
        lines,
        [
            "prestart \"id\":\"h1\" \"status\":\"creating\"",
            "createRuntime \"id\":\"h1\" \"status\":\"creating\"",
            "poststart \"id\":\"h1\" \"status\":\"running\"",
        ],
        "{started}"
    );
    assert_eq!(
        created.lines().count(),
        2,
        "create runs prestart and createRuntime: {created}"
    );
    bed.finish();
}
