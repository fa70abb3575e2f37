//! The testbed itself: nodes reach each other over the underlay, processes
//! land in the right namespace and cgroup, and nothing outlives a run, not
//! even one that panics.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_tests::{leftovers, require_root, run, Testbed, TestbedConfig};

#[test]
fn two_nodes_reach_each_other_over_the_underlay() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(2)).expect("testbed");
    let [n0, n1] = testbed.nodes() else {
        panic!("two nodes expected")
    };

    let listener = n1
        .netns()
        .run(|| TcpListener::bind(SocketAddrV4::new(n1.underlay_ip(), 0)))
        .expect("enter n1")
        .expect("bind on n1's underlay address");
    let server_addr = listener.local_addr().expect("listener address");
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().expect("accept");
        conn.write_all(b"pong").expect("reply");
        peer
    });

    let reply = n0
        .netns()
        .run(|| {
            let mut conn = TcpStream::connect_timeout(&server_addr, Duration::from_secs(5))?;
            let mut reply = String::new();
            conn.read_to_string(&mut reply)?;
            std::io::Result::Ok(reply)
        })
        .expect("enter n0")
        .expect("n0 connects to n1");
    assert_eq!(reply, "pong");
    let peer = server.join().expect("server thread");
    assert_eq!(peer.ip(), std::net::IpAddr::V4(n0.underlay_ip()));

    // The underlay is a plain switch: its bridge hands no frame to
    // netfilter, whatever the machine's (or a new namespace's) default; the
    // root namespace's setting is left as it was.
    let bridge_nf = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let root_before = std::fs::read_to_string(bridge_nf).ok();
    let underlay = testbed
        .underlay()
        .run(|| std::fs::read_to_string(bridge_nf).ok())
        .expect("enter the underlay");
    if let Some(value) = underlay {
        assert_eq!(value.trim(), "0", "the underlay's bridge calls iptables");
    }
    assert_eq!(std::fs::read_to_string(bridge_nf).ok(), root_before);

    // The underlay exists only inside the testbed's namespaces.
    let root_addrs = run(std::process::Command::new("ip").args(["-o", "addr"])).expect("ip addr");
    assert!(
        !root_addrs.contains(&n0.underlay_ip().to_string()),
        "underlay address leaked into the root namespace:\n{root_addrs}"
    );
}

#[test]
fn processes_start_in_the_node_netns_and_cgroup() {
    require_root();
    let testbed = Testbed::new(&TestbedConfig::new(1)).expect("testbed");
    let node = &testbed.nodes()[0];

    let mut cmd = node.netns().command("busybox").expect("command");
    cmd.args(["sleep", "30"]).stdin(Stdio::null());
    node.cgroup().add_on_spawn(&mut cmd).expect("cgroup");
    let mut child = cmd.spawn().expect("spawn busybox sleep");
    let pid = i32::try_from(child.id()).expect("pid fits");

    assert_eq!(node.cgroup().pids().expect("pids"), vec![pid]);
    let child_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("child netns");
    let node_ns = std::fs::metadata(node.netns().path()).expect("node netns");
    assert_eq!(
        child_ns.ino(),
        node_ns.ino(),
        "child is in the node's netns"
    );

    // Dropping the testbed kills what runs in the node's cgroup.
    drop(testbed);
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "sleep was killed, not finished: {status}"
    );
}

#[test]
fn nothing_is_left_after_a_run() {
    require_root();
    let config = TestbedConfig::new(2);
    let testbed = Testbed::new(&config).expect("testbed");
    let during = leftovers(&config.prefix).expect("leftovers");
    // Underlay + 2 nodes, the cgroup root and the pin root.
    assert_eq!(during.len(), 5, "{during:#?}");
    drop(testbed);
    assert_eq!(
        leftovers(&config.prefix).expect("leftovers"),
        Vec::<String>::new()
    );
}

#[test]
fn nothing_is_left_after_a_test_that_panics() {
    require_root();
    let config = TestbedConfig::new(2);
    let inner = config.clone();
    let sleeper = Arc::new(Mutex::new(None));
    let spawned = Arc::clone(&sleeper);
    let outcome = std::panic::catch_unwind(move || {
        let testbed = Testbed::new(&inner).expect("testbed");
        let node = &testbed.nodes()[1];
        let mut cmd = node.netns().command("busybox").expect("command");
        cmd.args(["sleep", "30"]);
        node.cgroup().add_on_spawn(&mut cmd).expect("cgroup");
        *spawned.lock().expect("lock") = Some(cmd.spawn().expect("spawn"));
        panic!("failing on purpose with a process running on a node");
    });
    assert!(outcome.is_err(), "the closure panicked");
    assert_eq!(
        leftovers(&config.prefix).expect("leftovers"),
        Vec::<String>::new()
    );

    // The unwinding testbed killed the process it was running.
    let mut child = sleeper.lock().expect("lock").take().expect("spawned");
    let status = child.wait().expect("wait");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
}

#[test]
fn sweep_kills_processes_a_killed_run_left_behind() {
    require_root();
    let prefix = berth_tests::RunPrefix::random();
    // What a killed test leaves: an agent-like process whose command line
    // names the run's paths, outside any of its cgroups.
    let mut orphan = std::process::Command::new("busybox")
        .args([
            "sh",
            "-c",
            "sleep 60; true",
            &format!("/run/netns/{prefix}-n0"),
        ])
        .spawn()
        .expect("spawn");
    let listed = format!("process {}", orphan.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found = leftovers(&prefix).expect("leftovers");
        if found.iter().any(|l| l.starts_with(&listed)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{found:#?}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    berth_tests::sweep(&prefix).expect("sweep");
    let status = orphan.wait().expect("wait");
    assert!(!status.success(), "the process was not killed");
    assert_eq!(leftovers(&prefix).expect("leftovers"), Vec::<String>::new());
}
