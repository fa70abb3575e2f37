//! The VXLAN overlay on three simulated nodes with berth-control and an
//! agent per node: pods wired by berth-cni (called as a runtime calls it)
//! reach pods on other nodes by IP, over TCP and UDP, at the pod MTU; the
//! overlay follows nodes that go or move, survives agent restarts without
//! disturbing connections, and repairs a deleted device.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use berth_tests::cluster::{Cluster, ClusterConfig};
use berth_tests::cni::workspace_bin;
use berth_tests::sockopt::dont_fragment;
use berth_tests::traffic::tcp_exchange;
use berth_tests::{require_root, Netns, Node, Testbed, TestbedConfig};
use serde_json::Value;

fn start(nodes: usize) -> Cluster {
    require_root();
    let config = TestbedConfig::new(nodes);
    let cluster = ClusterConfig::beside_current_exe(&config.prefix);
    Cluster::start(Testbed::new(&config).expect("testbed"), cluster).expect("cluster")
}

fn add_pod(cluster: &Cluster, i: usize, name: &str) -> (Netns, Ipv4Addr) {
    cluster
        .add_pod(&workspace_bin("berth-cni"), i, name)
        .expect("pod")
}

fn pod_cidr(cluster: &Cluster, node: &Node) -> String {
    cluster
        .kubectl(&["get", "node", node.name(), "-o", "jsonpath={.spec.podCIDR}"])
        .expect("kubectl")
}

/// Routes, neighbours and FDB entries on a node's VXLAN device.
fn overlay_entries(node: &Node) -> String {
    let routes = node
        .netns()
        .ip(&["route", "show", "dev", "berth.1"])
        .unwrap_or_default();
    let neigh = node
        .netns()
        .ip(&["neigh", "show", "dev", "berth.1"])
        .unwrap_or_default();
    let fdb = node
        .netns()
        .command("bridge")
        .and_then(|mut c| berth_tests::run(c.args(["fdb", "show", "dev", "berth.1"])))
        .unwrap_or_default();
    format!("{routes}{neigh}{fdb}")
}

fn wait_until(cluster: &Cluster, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}\n{}",
            cluster.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_routes(cluster: &Cluster, i: usize, peers: &[usize]) {
    cluster.wait_overlay(i, peers).expect("overlay routes");
}

/// A UDP datagram of `size` bytes with DF set from `client` to
/// `server_ip`, echoed back; returns the sender address the server saw.
fn udp_exchange(
    server: &Netns,
    server_ip: Ipv4Addr,
    client: &Netns,
    client_ip: Ipv4Addr,
    size: usize,
) -> SocketAddr {
    let socket = server
        .run(|| UdpSocket::bind((server_ip, 0)))
        .expect("enter")
        .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let target = socket.local_addr().expect("address");
    let sender = client
        .run(|| UdpSocket::bind((client_ip, 0)))
        .expect("enter")
        .expect("bind");
    dont_fragment(&sender).expect("set DF");
    sender
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let payload = vec![0x5a; size];
    let mut buf = vec![0; size + 1];
    // UDP may lose the first datagram while ARP resolves: retry a few times.
    for _ in 0..5 {
        sender.send_to(&payload, target).expect("send with DF");
        if let Ok((n, from)) = socket.recv_from(&mut buf) {
            assert_eq!(n, size, "the datagram arrived whole");
            socket.send_to(b"ok", from).expect("echo");
            let (n, _) = sender.recv_from(&mut buf).expect("echo back");
            assert_eq!(&buf[..n], b"ok");
            return from;
        }
    }
    panic!("no {size}-byte datagram from {client_ip} reached {target}");
}

#[test]
fn pods_on_different_nodes_reach_each_other_by_ip_over_tcp_and_udp_at_the_pod_mtu() {
    let cluster = start(3);
    let nodes = cluster.testbed().nodes();
    let pods: Vec<(Netns, Ipv4Addr)> = (0..3)
        .map(|i| add_pod(&cluster, i, &format!("p{i}")))
        .collect();
    for i in 0..3 {
        let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
        wait_routes(&cluster, i, &others);
    }
    // Each node publishes its VTEP.
    let annotations = cluster
        .kubectl(&[
            "get",
            "node",
            nodes[1].name(),
            "-o",
            "jsonpath={.metadata.annotations}",
        ])
        .expect("kubectl");
    let annotations: Value = serde_json::from_str(&annotations).expect("json");
    assert_eq!(
        annotations["berth.dev/underlay-ip"],
        nodes[1].underlay_ip().to_string()
    );
    assert!(overlay_entries(&nodes[0])
        .contains(annotations["berth.dev/vtep-mac"].as_str().expect("mac")));

    // The pods' MTU is the overlay's: underlay 1500 - 50.
    let conflist = cluster.cni_conflist(0).expect("conflist");
    assert_eq!(conflist["plugins"][0]["mtu"], 1450);
    let vxlan = nodes[0]
        .netns()
        .ip(&["-d", "link", "show", "berth.1"])
        .expect("device");
    assert!(
        vxlan.contains("mtu 1450")
            && vxlan.contains("vxlan id 1")
            && vxlan.contains("dstport 8472"),
        "{vxlan}"
    );

    // TCP across every pair of nodes, no NAT: the server sees the pod IP.
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let seen = tcp_exchange(&pods[b].0, pods[b].1, &pods[a].0);
        assert_eq!(seen.ip(), pods[a].1, "pod {a} -> pod {b}");
    }
    // UDP, with a datagram filling the pod MTU (1450 - 20 IP - 8 UDP) and DF set.
    let seen = udp_exchange(&pods[2].0, pods[2].1, &pods[0].0, pods[0].1, 1450 - 28);
    assert_eq!(seen.ip(), pods[0].1);
    // One byte more does not fit the pod's interface: refused, not fragmented.
    let sender = pods[0]
        .0
        .run(|| UdpSocket::bind((pods[0].1, 0)))
        .expect("enter")
        .expect("bind");
    dont_fragment(&sender).expect("DF");
    let too_big = sender.send_to(&[0; 1450 - 27], (pods[2].1, 9));
    assert!(
        too_big.is_err(),
        "a datagram over the MTU with DF set was sent"
    );

    // Leaving the cluster CIDR (to a host on the underlay, which has no
    // route back to pods), pod traffic takes the node's address; the agent
    // restores the rule when something flushes it away.
    let underlay = cluster.testbed().underlay();
    let host = Ipv4Addr::new(172, 30, 0, 254);
    underlay
        .ip(&["addr", "add", &format!("{host}/24"), "dev", "ul0"])
        .expect("a host on the underlay");
    assert_eq!(
        tcp_exchange(underlay, host, &pods[0].0).ip(),
        nodes[0].underlay_ip()
    );
    let repairs = || {
        cluster
            .agent_metrics(0)
            .lines()
            .find_map(|l| l.strip_prefix("berth_agent_masquerade_repairs_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = repairs();
    let mut flush = nodes[0].netns().command("nft").expect("nft");
    berth_tests::run(flush.args(["flush", "ruleset"])).expect("flush ruleset");
    wait_until(&cluster, "n0's agent restores the masquerade rule", || {
        repairs() > before
    });
    assert_eq!(
        tcp_exchange(underlay, host, &pods[0].0).ip(),
        nodes[0].underlay_ip()
    );
}

/// A line echo over a long-lived TCP connection.
fn echo(conn: &mut BufReader<TcpStream>, text: &str) {
    conn.get_mut()
        .write_all(format!("{text}\n").as_bytes())
        .expect("write on the long connection");
    let mut line = String::new();
    conn.read_line(&mut line)
        .expect("read on the long connection");
    assert_eq!(line.trim_end(), text);
}

#[test]
fn overlay_follows_deleted_and_moved_nodes_survives_agent_restarts_and_repairs_its_device() {
    let cluster = start(3);
    let (pod0, ip0) = add_pod(&cluster, 0, "a");
    let (pod1, ip1) = add_pod(&cluster, 1, "b");
    wait_routes(&cluster, 0, &[1, 2]);
    wait_routes(&cluster, 1, &[0, 2]);
    let nodes = cluster.testbed().nodes();
    let (n0, n1, n2) = (&nodes[0], &nodes[1], &nodes[2]);
    let cidr2 = pod_cidr(&cluster, n2);

    // A long-lived connection pod a (n0) -> pod b (n1), echoing lines.
    let listener = pod1
        .run(|| TcpListener::bind((ip1, 0)))
        .expect("enter")
        .expect("listen");
    let target = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().expect("accept");
        let mut reader = BufReader::new(conn);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if reader.get_mut().write_all(line.as_bytes()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let conn = pod0
        .run(|| TcpStream::connect_timeout(&target, Duration::from_secs(5)))
        .expect("enter")
        .expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut conn = BufReader::new(conn);
    echo(&mut conn, "before");
    let mac = cluster
        .kubectl(&[
            "get",
            "node",
            n1.name(),
            "-o",
            "jsonpath={.metadata.annotations.berth\\.dev/vtep-mac}",
        ])
        .expect("kubectl");
    assert!(!mac.is_empty(), "n1 has a VTEP MAC annotation");
    let n0_entries_for_n1 = |entries: &str| -> Vec<String> {
        entries
            .lines()
            .filter(|l| l.contains(&mac) || l.contains(&pod_cidr(&cluster, n1)))
            .map(str::to_string)
            .collect()
    };
    let before = n0_entries_for_n1(&overlay_entries(n0));
    assert_eq!(
        before.len(),
        3,
        "route, neighbour and FDB entry for n1: {before:?}"
    );

    // n0's agent dies; meanwhile n2 leaves the cluster.
    cluster.kill_agent(0);
    cluster.kill_agent(2);
    cluster
        .kubectl(&["delete", "node", n2.name()])
        .expect("delete node n2");
    echo(&mut conn, "while n0's agent is down");
    // n1's agent (running) removes n2 at once.
    wait_until(&cluster, "n1 forgets n2", || {
        !overlay_entries(n1).contains(&cidr2)
    });
    assert!(
        overlay_entries(n0).contains(&cidr2),
        "nothing changed n0 while its agent was down"
    );
    // n1's agent stops too, and its Node lacks its overlay annotations for
    // a while (as when it re-registers): n0's restart must keep n1's
    // entries, which its kernel still has.
    cluster.kill_agent(1);
    cluster
        .kubectl(&[
            "annotate",
            "node",
            n1.name(),
            "berth.dev/vtep-mac-",
            "berth.dev/underlay-ip-",
        ])
        .expect("remove n1's annotations");

    // n0's agent restarts: it removes n2's entries and leaves n1's alone.
    cluster
        .start_agent(0, n0.underlay_ip())
        .expect("restart agent n0");
    wait_until(&cluster, "n0 forgets n2 after its restart", || {
        !overlay_entries(n0).contains(&cidr2)
    });
    echo(&mut conn, "after the restart");
    assert_eq!(
        n0_entries_for_n1(&overlay_entries(n0)),
        before,
        "n1's entries changed"
    );
    // Exactly n2's three entries were removed: nothing was flushed and
    // re-added (which the text above could not tell).
    let metrics = cluster.agent_metrics(0);
    assert!(
        metrics.contains("berth_agent_overlay_changes_total 3\n"),
        "{metrics}"
    );
    cluster
        .start_agent(1, n1.underlay_ip())
        .expect("restart agent n1");
    wait_until(&cluster, "n1 publishes its annotations again", || {
        cluster
            .kubectl(&[
                "get",
                "node",
                n1.name(),
                "-o",
                "jsonpath={.metadata.annotations}",
            ])
            .is_ok_and(|a| a.contains(&mac))
    });

    // The VXLAN device deleted behind the agent's back comes back, entries and all.
    n0.netns()
        .ip(&["link", "del", "berth.1"])
        .expect("delete device");
    wait_routes(&cluster, 0, &[1]);
    assert_eq!(tcp_exchange(&pod1, ip1, &pod0).ip(), ip0);

    // n1 moves to another underlay address: n0's FDB follows.
    let moved = Ipv4Addr::new(172, 30, 0, 102);
    // (Old address first: deleting a primary address takes its secondaries along.)
    n1.netns()
        .ip(&[
            "addr",
            "del",
            &format!("{}/24", n1.underlay_ip()),
            "dev",
            "eth0",
        ])
        .expect("old address");
    n1.netns()
        .ip(&["addr", "add", &format!("{moved}/24"), "dev", "eth0"])
        .expect("new address");
    cluster.kill_agent(1);
    cluster
        .start_agent(1, moved)
        .expect("restart agent n1 on its new address");
    wait_until(&cluster, "n0's FDB points at n1's new address", || {
        overlay_entries(n0).contains(&format!("dst {moved}"))
    });
    assert!(!overlay_entries(n0).contains(&format!("dst {} ", n1.underlay_ip())));
    assert_eq!(tcp_exchange(&pod1, ip1, &pod0).ip(), ip0);
    assert_eq!(tcp_exchange(&pod0, ip0, &pod1).ip(), ip1);
    drop(conn);
    server.join().expect("echo server");
}
