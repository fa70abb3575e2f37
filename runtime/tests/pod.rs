//! Pods through the library layer the agent uses: a `berth-pause` sandbox
//! owning the pod's namespaces and app containers from an image joining
//! them (privileged: run as root).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_runtime::pod::{ContainerSpec, PodConfig, Pods};
use common::{busybox_rootfs, pause_binary, Bed};

fn pods(bed: &Bed) -> Pods {
    let images = bed.dir.join("images");
    let rootfs = bed.dir.join("busybox");
    busybox_rootfs(&rootfs);
    let layout = bed.pack("busybox", &[&rootfs]);
    bed.ok(&[
        "--images",
        images.to_str().expect("path"),
        "image",
        "import",
        layout.to_str().expect("path"),
    ]);
    Pods::new(PodConfig {
        runtime: PathBuf::from(env!("CARGO_BIN_EXE_berth-runtime")),
        root: bed.root.clone(),
        cgroup_parent: bed.prefix.clone(),
        images,
        pods: bed.dir.join("pods"),
        pause: pause_binary(),
    })
}

fn app(name: &str, script: &str) -> ContainerSpec {
    ContainerSpec {
        name: name.to_owned(),
        image: "busybox".to_owned(),
        command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
        ..ContainerSpec::default()
    }
}

fn wait_for_log(path: &Path, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never showed {want:?}: {text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn two_containers_of_a_pod_talk_over_localhost() {
    let bed = Bed::new("pod");
    let pods = pods(&bed);
    let sandbox = pods.run_sandbox("web", "web-pod").expect("sandbox");
    assert!(sandbox.namespace("net").exists());

    pods.add_container(
        "web",
        &app(
            "server",
            "echo hello-from-server | nc -l -p 8080; sleep 1000",
        ),
    )
    .expect("server");
    pods.add_container(
        "web",
        &app(
            "client",
            "hostname; until nc 127.0.0.1 8080; do sleep 0.1; done; echo client-done; sleep 1000",
        ),
    )
    .expect("client");
    let log = wait_for_log(&pods.log_path("web", "client"), "client-done");
    assert!(
        log.starts_with("web-pod\n"),
        "the sandbox's hostname: {log}"
    );
    assert!(log.contains("hello-from-server"), "{log}");

    // Both share the sandbox's network namespace, not the host's.
    let ns = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    for name in ["server", "client"] {
        let pid = pods.state(&format!("web.{name}")).expect("state").pid;
        assert_eq!(ns(pid), ns(sandbox.pid), "{name}");
    }
    assert_ne!(ns(sandbox.pid), ns(std::process::id() as i32));

    pods.stop("web", Duration::from_secs(5)).expect("stop");
    assert!(pods.list().expect("list").is_empty());
    assert!(!bed.dir.join("pods/web").exists());
    assert!(std::fs::read_dir(bed.dir.join("images/rootfs"))
        .expect("rootfs dir")
        .next()
        .is_none());
    bed.finish();
}

#[test]
fn stopping_a_pod_honours_the_grace_period_then_kills() {
    let bed = Bed::new("podstop");
    let pods = pods(&bed);
    pods.run_sandbox("p", "p").expect("sandbox");
    pods.add_container(
        "p",
        &app("polite", "trap 'exit 0' TERM; while :; do sleep 0.1; done"),
    )
    .expect("polite");
    pods.add_container(
        "p",
        &app("stubborn", "trap '' TERM; while :; do sleep 0.1; done"),
    )
    .expect("stubborn");
    let grace = Duration::from_secs(2);
    let started = Instant::now();
    pods.stop("p", grace).expect("stop");
    assert!(
        started.elapsed() >= grace,
        "the stubborn container had its grace period"
    );
    assert!(pods.list().expect("list").is_empty());
    bed.finish();
}

#[test]
fn the_sandbox_reaps_orphans_of_a_shared_pid_namespace() {
    let bed = Bed::new("podreap");
    let pods = pods(&bed);
    let sandbox = pods.run_sandbox("r", "r").expect("sandbox");
    let mut spec = app(
        "orphans",
        "for i in 1 2 3; do (sleep 0.2 &); done; echo spawned; sleep 1000",
    );
    spec.share_pid_namespace = true;
    pods.add_container("r", &spec).expect("container");
    wait_for_log(&pods.log_path("r", "orphans"), "spawned");
    std::thread::sleep(Duration::from_millis(800));
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", sandbox.pid))
        .unwrap_or_default();
    let zombies: Vec<&str> = children
        .split_whitespace()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'))
            })
        })
        .collect();
    assert!(
        zombies.is_empty(),
        "unreaped children of berth-pause: {zombies:?}"
    );
    pods.stop("r", Duration::from_secs(5)).expect("stop");
    bed.finish();
}
