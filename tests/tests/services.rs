//! Service load balancing on three simulated nodes with berth-control and
//! agents: Services and EndpointSlices created through the API (no
//! EndpointSlice controller exists yet, so the tests write the slices as
//! one would), backends are servers in pod namespaces on every node, and
//! clients are processes in a pod's namespace and its node's cgroup.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_tests::cluster::{Cluster, ClusterConfig};
use berth_tests::cni::workspace_bin;
use berth_tests::{require_root, Netns, Testbed, TestbedConfig};
use serde_json::{json, Value};

const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 5353;

fn start() -> Cluster {
    require_root();
    let config = TestbedConfig::new(3);
    let cluster = ClusterConfig::beside_current_exe(&config.prefix);
    Cluster::start(Testbed::new(&config).expect("testbed"), cluster).expect("cluster")
}

/// A backend pod: answers TCP with its name then echoes lines, and UDP
/// datagrams with its name.
struct BackendPod {
    name: String,
    ip: Ipv4Addr,
    node: String,
    _netns: Netns,
}

fn backend(cluster: &Cluster, i: usize, name: &str) -> BackendPod {
    let (netns, ip) = cluster
        .add_pod(&workspace_bin("berth-cni"), i, name)
        .expect("pod");
    let tcp = netns
        .run(|| TcpListener::bind((ip, TCP_PORT)))
        .expect("enter")
        .expect("listen");
    let udp = netns
        .run(|| UdpSocket::bind((ip, UDP_PORT)))
        .expect("enter")
        .expect("bind");
    let greeting = name.to_string();
    std::thread::spawn(move || {
        for conn in tcp.incoming().flatten() {
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let mut writer = conn.try_clone().expect("clone");
                if writeln!(writer, "{greeting}").is_err() {
                    return;
                }
                let mut line = String::new();
                let mut reader = BufReader::new(conn);
                while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                    if writer.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    let reply = name.to_string();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(reply.as_bytes(), from);
        }
    });
    BackendPod {
        name: name.to_string(),
        ip,
        node: cluster.testbed().nodes()[i].name().to_string(),
        _netns: netns,
    }
}

fn service(cluster: &Cluster) -> Ipv4Addr {
    cluster
        .apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"ports": [
                {"name": "tcp", "port": 80, "targetPort": TCP_PORT, "protocol": "TCP"},
                {"name": "udp", "port": 53, "targetPort": UDP_PORT, "protocol": "UDP"},
            ]},
        }))
        .expect("create the Service");
    cluster
        .kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"])
        .expect("read its cluster IP")
        .parse()
        .expect("an IPv4 cluster IP")
}

/// Writes the Service's EndpointSlice: each backend with its conditions.
fn endpoints(cluster: &Cluster, backends: &[(&BackendPod, Value)]) {
    let endpoints: Vec<Value> = backends
        .iter()
        .map(|(b, conditions)| json!({"addresses": [b.ip.to_string()], "conditions": conditions, "nodeName": b.node}))
        .collect();
    cluster
        .apply(&json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "tcp", "port": TCP_PORT, "protocol": "TCP"}, {"name": "udp", "port": UDP_PORT, "protocol": "UDP"}],
            "endpoints": endpoints,
        }))
        .expect("write the EndpointSlice");
}

fn ready() -> Value {
    json!({"ready": true})
}

/// `berth-agent bpf ARGS --pin-dir …` on node `i`: its output; panics if
/// it fails.
fn bpf(cluster: &Cluster, i: usize, args: &[&str]) -> String {
    let pins = cluster.testbed().nodes()[i].pin_dir().display().to_string();
    berth_tests::run(
        std::process::Command::new(workspace_bin("berth-agent"))
            .arg("bpf")
            .args(args)
            .args(["--pin-dir", &pins]),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `berth-agent bpf lb list -o json` on node `i`.
fn lb_list(cluster: &Cluster, i: usize) -> Value {
    serde_json::from_str(&bpf(cluster, i, &["lb", "list", "-o", "json"])).expect("json")
}

/// The backends node `i` holds for `frontend` (`IP:PORT/PROTO`).
fn programmed(cluster: &Cluster, i: usize, frontend: &str) -> Option<Vec<String>> {
    lb_list(cluster, i)
        .as_array()?
        .iter()
        .find(|e| e["frontend"] == frontend)
        .map(|e| {
            e["slots"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["backend"].as_str().unwrap_or_default().to_string())
                .collect()
        })
}

fn wait_programmed(cluster: &Cluster, i: usize, frontend: &str, backends: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = programmed(cluster, i, frontend);
        if found.as_ref().is_some_and(|b| b.len() == backends) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {i} never held {backends} backends for {frontend} (holds {found:?})\n{}",
            cluster.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `berth-agent bpf lb explain FRONTEND` on node 0.
fn explain(cluster: &Cluster, frontend: &str, extra: &[&str]) -> String {
    bpf(cluster, 0, &[&["lb", "explain", frontend], extra].concat())
}

/// How often each reply's first word came back.
fn tally(lines: &[String]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for line in lines {
        let word = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

/// A backend pod on every node behind Service `web` (all ready), and a
/// client pod on n0.
fn web_service(cluster: &Cluster) -> (Vec<BackendPod>, Ipv4Addr, Netns) {
    let backends: Vec<BackendPod> = (0..3)
        .map(|i| backend(cluster, i, &format!("web{i}")))
        .collect();
    let vip = service(cluster);
    endpoints(
        cluster,
        &backends.iter().map(|b| (b, ready())).collect::<Vec<_>>(),
    );
    let (client, _) = cluster
        .add_pod(&workspace_bin("berth-cni"), 0, "client")
        .expect("client pod");
    (backends, vip, client)
}

#[test]
fn cluster_ip_spreads_tcp_and_udp_over_nodes_and_follows_endpoint_changes() {
    let cluster = start();
    let (backends, vip, client) = web_service(&cluster);
    let tcp_frontend = format!("{vip}:80/TCP");
    let tcp_target = format!("{vip}:80");
    let udp_target = format!("{vip}:53");
    for node in 0..3 {
        wait_programmed(&cluster, node, &tcp_frontend, 3);
        wait_programmed(&cluster, node, &format!("{vip}:53/UDP"), 3);
    }

    // 300 TCP connections from a pod on n0 reach every backend, on every
    // node, roughly evenly; the socket reports the cluster IP as its peer.
    let lines = cluster
        .probe(
            0,
            &client,
            &["tcp", "--target", &tcp_target, "--count", "300"],
        )
        .expect("probe");
    let counts = tally(&lines);
    for b in &backends {
        let n = counts.get(&b.name).copied().unwrap_or(0);
        assert!(n >= 50, "{} got {n} of 300: {counts:?}", b.name);
    }
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {tcp_target}"))),
        "getpeername shows the backend: {lines:?}"
    );

    let explained = explain(&cluster, &tcp_frontend, &[]);
    assert!(
        explained.contains("one of 3 backends at random"),
        "{explained}"
    );
    for b in &backends {
        assert!(
            explained.contains(&format!("{}:{TCP_PORT}/TCP", b.ip)),
            "{explained}"
        );
    }

    // UDP from an unconnected socket: every backend answers, and every
    // answer comes from the cluster IP (recvmsg translated back).
    let lines = cluster
        .probe(
            0,
            &client,
            &["udp", "--target", &udp_target, "--count", "90"],
        )
        .expect("probe");
    let counts = tally(&lines);
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.keys().all(|k| k.starts_with("web")), "{counts:?}");
    assert!(
        lines.iter().all(|l| l.ends_with(&format!(" {udp_target}"))),
        "{lines:?}"
    );

    // The datapath is scoped to the node: outside n0's cgroup (this test
    // process) the cluster IP means nothing, and nothing is attached at
    // the machine's cgroup2 root.
    let root = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show", berth_tests::CGROUP2_ROOT])
        .output()
        .expect("bpftool");
    let root = String::from_utf8_lossy(&root.stdout);
    assert!(
        !root.contains("berth_"),
        "a program at the cgroup2 root: {root}"
    );
    let node = std::process::Command::new("bpftool")
        .args(["-j", "cgroup", "show"])
        .arg(cluster.testbed().nodes()[0].cgroup().path())
        .output()
        .expect("bpftool");
    let node = String::from_utf8_lossy(&node.stdout);
    for hook in [
        "berth_connect4",
        "berth_sendmsg4",
        "berth_recvmsg4",
        "berth_getpeername4",
    ] {
        assert!(node.contains(hook), "{hook} missing on n0's cgroup: {node}");
    }

    // A UDP client with a connected socket talks to one backend...
    let mut udp_client = cluster
        .probe_command(0, &client, &["udp-hold", "--target", &udp_target])
        .expect("probe")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn probe");
    let mut udp_lines = BufReader::new(udp_client.stdout.take().expect("stdout")).lines();
    let connected = udp_lines.next().expect("a line").expect("read");
    let leaving = connected
        .strip_prefix("connected ")
        .unwrap_or_else(|| panic!("{connected}"))
        .to_string();
    let staying: Vec<&BackendPod> = backends.iter().filter(|b| b.name != leaving).collect();
    assert_eq!(staying.len(), 2, "{connected}");

    // ...which leaves: new connections never reach it, and the UDP
    // client's socket is closed at once (its recv fails), not left talking
    // into the void.
    endpoints(&cluster, &[(staying[0], ready()), (staying[1], ready())]);
    wait_programmed(&cluster, 0, &tcp_frontend, 2);
    let counts = tally(
        &cluster
            .probe(
                0,
                &client,
                &["tcp", "--target", &tcp_target, "--count", "60"],
            )
            .expect("probe"),
    );
    assert!(!counts.contains_key(&leaving), "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 60, "{counts:?}");
    let closed = udp_lines.next().expect("a line").expect("read");
    assert_eq!(
        closed, "error ConnectionAborted",
        "the connected UDP socket was not closed"
    );
    let _ = udp_client.wait();

    // None ready: the serving-and-terminating one takes the traffic.
    endpoints(
        &cluster,
        &[
            (
                staying[0],
                json!({"ready": false, "serving": false, "terminating": true}),
            ),
            (
                staying[1],
                json!({"ready": false, "serving": true, "terminating": true}),
            ),
        ],
    );
    wait_programmed(&cluster, 0, &tcp_frontend, 1);
    let counts = tally(
        &cluster
            .probe(
                0,
                &client,
                &["tcp", "--target", &tcp_target, "--count", "30"],
            )
            .expect("probe"),
    );
    assert_eq!(counts.get(&staying[1].name), Some(&30), "{counts:?}");

    // No endpoints at all: refused at once.
    endpoints(&cluster, &[]);
    wait_programmed(&cluster, 0, &tcp_frontend, 0);
    let started = Instant::now();
    let lines = cluster
        .probe(0, &client, &["tcp", "--target", &tcp_target])
        .expect("probe");
    assert!(lines[0].starts_with("error"), "{lines:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not refused at once: {:?}",
        started.elapsed()
    );

    // The table view for people.
    let table = bpf(&cluster, 0, &["lb", "list"]);
    assert!(
        table.contains(&tcp_frontend) && table.contains("refused"),
        "{table}"
    );
    let explained = explain(&cluster, &tcp_frontend, &[]);
    assert!(explained.contains("refused at once"), "{explained}");
    let explained = explain(&cluster, "192.0.2.1:80/TCP", &[]);
    assert!(explained.contains("not a service frontend"), "{explained}");
}

#[test]
fn client_ip_affinity_pins_each_client_pod_until_it_is_turned_off() {
    let cluster = start();
    let (_backends, vip, client) = web_service(&cluster);
    let (other, _) = cluster
        .add_pod(&workspace_bin("berth-cni"), 0, "other")
        .expect("second client pod");
    let frontend = format!("{vip}:80/TCP");
    let target = format!("{vip}:80");
    wait_programmed(&cluster, 0, &frontend, 3);
    cluster
        .kubectl(&[
            "patch", "service", "web", "--type=merge", "-p",
            r#"{"spec":{"sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":600}}}}"#,
        ])
        .expect("turn affinity on");
    let deadline = Instant::now() + Duration::from_secs(30);
    while lb_list(&cluster, 0)
        .as_array()
        .and_then(|l| {
            l.iter()
                .find(|e| e["frontend"] == frontend.as_str())
                .cloned()
        })
        .is_none_or(|e| e["affinity_timeout"] != 600)
    {
        assert!(
            Instant::now() < deadline,
            "affinity never programmed\n{}",
            cluster.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every connection of one pod goes to one backend; each pod has its own.
    for pod in [&client, &other] {
        let counts = tally(
            &cluster
                .probe(0, pod, &["tcp", "--target", &target, "--count", "40"])
                .expect("probe"),
        );
        assert_eq!(counts.len(), 1, "one client, several backends: {counts:?}");
    }
    let listed: Value =
        serde_json::from_str(&bpf(&cluster, 0, &["affinity", "list", "-o", "json"])).expect("json");
    let clients = listed.as_array().expect("a list");
    assert_eq!(clients.len(), 2, "{listed}");
    assert!(
        clients.iter().all(|c| c["frontend"] == frontend.as_str()),
        "{listed}"
    );

    // Turned off: the same pod is spread again.
    cluster
        .kubectl(&[
            "patch",
            "service",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"sessionAffinity":"None"}}"#,
        ])
        .expect("turn affinity off");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counts = tally(
            &cluster
                .probe(0, &client, &["tcp", "--target", &target, "--count", "40"])
                .expect("probe"),
        );
        if counts.len() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "still pinned: {counts:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn an_agent_restart_leaves_a_stream_through_a_cluster_ip_unbroken_and_backend_ids_unchanged() {
    let cluster = start();
    let (_backends, vip, client) = web_service(&cluster);
    wait_programmed(&cluster, 0, &format!("{vip}:80/TCP"), 3);
    let before = lb_list(&cluster, 0);

    let target = format!("{vip}:80");
    let mut hold = cluster
        .probe_command(0, &client, &["hold", "--target", &target, "--seconds", "6"])
        .expect("probe")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn probe");
    let mut lines = BufReader::new(hold.stdout.take().expect("stdout")).lines();
    let connected = lines.next().expect("a line").expect("read");
    assert!(connected.starts_with("connected web"), "{connected}");

    cluster.kill_agent(0);
    std::thread::sleep(Duration::from_millis(500));
    cluster
        .start_agent(0, cluster.testbed().nodes()[0].underlay_ip())
        .expect("restart agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cluster
        .agent_metrics(0)
        .contains("berth_agent_lb_syncs_total")
    {
        assert!(
            Instant::now() < deadline,
            "the restarted agent never synced\n{}",
            cluster.agent_logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A pass over unchanged services writes nothing.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = cluster.agent_metrics(0);
    assert!(
        metrics.contains("berth_agent_lb_changes_total 0\n"),
        "{metrics}"
    );
    assert_eq!(
        lb_list(&cluster, 0),
        before,
        "backend ids or slots changed across the restart"
    );

    let held = lines.next().expect("a line").expect("read");
    assert!(held.starts_with("held "), "the stream broke: {held}");
    assert!(hold.wait().expect("probe exit").success());
}

#[test]
fn ten_thousand_services_are_programmed_and_listed() {
    require_root();
    let config = TestbedConfig::new(1);
    let cluster = Cluster::start(
        Testbed::new(&config).expect("testbed"),
        ClusterConfig::beside_current_exe(&config.prefix),
    )
    .expect("cluster");
    const SERVICES: usize = 10_000;
    let mut items = Vec::with_capacity(2 * SERVICES);
    for i in 0..SERVICES {
        let name = format!("s{i}");
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        }));
        let endpoints: Vec<Value> = (0..3)
            .map(|e| json!({"addresses": [format!("10.244.{}.{}", i / 250, (i % 250) + e)]}))
            .collect();
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }));
    }
    // A stream of JSON documents (kubectl validates a `List` against the
    // server's OpenAPI, which does not describe List).
    let stream: String = items.iter().map(|item| format!("{item}\n")).collect();
    let path = std::env::temp_dir().join(format!("{}-10k.json", config.prefix));
    std::fs::write(&path, stream).expect("write manifest");
    let started = Instant::now();
    let created = cluster.kubectl(&[
        "create",
        "--validate=false",
        "-f",
        &path.display().to_string(),
    ]);
    eprintln!("created {} objects in {:?}", items.len(), started.elapsed());
    let _ = std::fs::remove_file(&path);
    created.expect("kubectl create 10 000 Services and EndpointSlices");

    // The 10 000 plus the API server's own `kubernetes` Service.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let listed = lb_list(&cluster, 0);
        let entries = listed.as_array().expect("a list");
        let complete = entries
            .iter()
            .filter(|e| e["slots"].as_array().is_some_and(|s| s.len() == 3))
            .count();
        if complete == SERVICES {
            assert_eq!(entries.len(), SERVICES + 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{complete} of {SERVICES} services programmed\n{}",
            cluster.agent_logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!(
        "programmed {SERVICES} services {:?} after the creates began",
        started.elapsed()
    );
    let metrics = cluster.agent_metrics(0);
    assert!(
        metrics.contains("berth_agent_lb_frontends 10001\n"),
        "{metrics}"
    );
}

#[test]
fn a_full_map_is_reported_and_counted_and_other_services_still_programmed() {
    require_root();
    let config = TestbedConfig::new(1);
    let mut cluster_config = ClusterConfig::beside_current_exe(&config.prefix);
    // Room for 16 backend slots: the `kubernetes` Service (1), `small` (2),
    // never `big` (20).
    cluster_config.agent_args = vec!["--lb-slots-map-size".into(), "16".into()];
    let cluster =
        Cluster::start(Testbed::new(&config).expect("testbed"), cluster_config).expect("cluster");
    for (name, count) in [("big", 20), ("small", 2)] {
        cluster
            .apply(&json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
            }))
            .expect("Service");
        let endpoints: Vec<Value> = (0..count)
            .map(|i| json!({"addresses": [format!("10.244.9.{}", i + 1)]}))
            .collect();
        cluster
            .apply(&json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }))
            .expect("EndpointSlice");
    }
    let small: Ipv4Addr = cluster
        .kubectl(&[
            "get",
            "service",
            "small",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect("cluster IP")
        .parse()
        .expect("IPv4");
    wait_programmed(&cluster, 0, &format!("{small}:80/TCP"), 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = cluster.agent_metrics(0);
        let full = metrics
            .lines()
            .find_map(|l| l.strip_prefix("berth_agent_lb_map_full_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if full > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a full map was never counted\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let logs = cluster.agent_logs();
    assert!(
        logs.contains("is full"),
        "the agent did not say which map is full:\n{logs}"
    );
}

/// `berth-agent bpf ct list -o json` on node `i`.
fn ct_list(cluster: &Cluster, i: usize) -> Value {
    serde_json::from_str(&bpf(cluster, i, &["ct", "list", "-o", "json"])).expect("json")
}

/// A NodePort Service `name` with a TCP port 80 and a UDP port 53 to the
/// backends' ports, on node ports `tcp` and `udp`.
fn node_port_service(name: &str, tcp: u16, udp: u16) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "NodePort", "ports": [
            {"name": "tcp", "port": 80, "targetPort": TCP_PORT, "protocol": "TCP", "nodePort": tcp},
            {"name": "udp", "port": 53, "targetPort": UDP_PORT, "protocol": "UDP", "nodePort": udp},
        ]},
    })
}

#[test]
fn node_port_answers_clients_outside_the_nodes_from_the_node_address() {
    let cluster = start();
    let backends: Vec<BackendPod> = (0..3)
        .map(|i| backend(&cluster, i, &format!("web{i}")))
        .collect();
    cluster
        .apply(&node_port_service("web", 30080, 30053))
        .expect("create the NodePort Service");
    endpoints(
        &cluster,
        &backends.iter().map(|b| (b, ready())).collect::<Vec<_>>(),
    );
    let nodes = cluster.testbed().nodes();
    for (i, node) in nodes.iter().enumerate() {
        wait_programmed(&cluster, i, &format!("{}:30080/TCP", node.underlay_ip()), 3);
    }

    // A client outside every node: a host on the underlay.
    let underlay = cluster.testbed().underlay();
    let host = Ipv4Addr::new(172, 30, 0, 254);
    underlay
        .ip(&["addr", "add", &format!("{host}/24"), "dev", "ul0"])
        .expect("a host on the underlay");
    for node in nodes {
        let target = (node.underlay_ip(), 30080);
        let greetings: Vec<String> = underlay
            .run(|| {
                (0..60)
                    .map(|_| {
                        let conn = std::net::TcpStream::connect_timeout(
                            &std::net::SocketAddr::from(target),
                            Duration::from_secs(5),
                        )
                        .unwrap_or_else(|e| {
                            panic!(
                                "connect to the NodePort from outside: {e}\n{}",
                                cluster.agent_logs()
                            )
                        });
                        conn.set_read_timeout(Some(Duration::from_secs(5)))
                            .expect("timeout");
                        // The handshake completed with node:30080, so the
                        // answer came from the address the client asked.
                        assert_eq!(
                            conn.peer_addr().expect("peer"),
                            std::net::SocketAddr::from(target)
                        );
                        let mut line = String::new();
                        BufReader::new(conn).read_line(&mut line).expect("greeting");
                        line.trim().to_string()
                    })
                    .collect()
            })
            .expect("enter the underlay");
        let seen = tally(&greetings);
        assert_eq!(
            seen.len(),
            3,
            "node {}: backends on every node answer: {seen:?}",
            node.name()
        );

        let udp = underlay
            .run(|| UdpSocket::bind((host, 0)))
            .expect("enter")
            .expect("bind");
        udp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        udp.send_to(b"ping", (node.underlay_ip(), 30053))
            .expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = udp.recv_from(&mut buf).expect("a UDP answer");
        assert_eq!(
            from,
            std::net::SocketAddr::from((node.underlay_ip(), 30053)),
            "the answer comes from the NodePort"
        );
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("web"));
    }
    // Hairpin: a backend reaching the service through its own node's
    // NodePort is among the backends that answer it.
    let own = format!("{}:30080", nodes[0].underlay_ip());
    let lines = cluster
        .probe(
            0,
            &backends[0]._netns,
            &["tcp", "--target", &own, "--count", "60"],
        )
        .expect("probe from a backend pod");
    assert!(tally(&lines).contains_key("web0"), "{lines:?}");

    let ct = ct_list(&cluster, 0);
    let entries = ct.as_array().expect("entries");
    assert!(
        entries.iter().any(|e| e["direction"] == "original"
            && e["from"]
                .as_str()
                .is_some_and(|f| f.starts_with("172.30.0.254:"))),
        "{ct}"
    );
    assert!(entries.iter().any(|e| e["direction"] == "reply"), "{ct}");
    // Translated connections take source ports above the node's ephemeral
    // range (32768-60999 in a new namespace), which its own connections
    // from the same address use.
    for entry in entries.iter().filter(|e| e["direction"] == "original") {
        let port: u16 = entry["new_from"]
            .as_str()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
            .expect("a translated source");
        assert!(port >= 61000, "{entry}");
    }

    // A NodePort with no endpoint at all refuses a client outside at once
    // (a TCP reset, an ICMP port unreachable for UDP; not silence until
    // the client gives up).
    cluster
        .apply(&node_port_service("empty", 30081, 30082))
        .expect("create a Service without endpoints");
    for (i, node) in nodes.iter().enumerate() {
        wait_programmed(&cluster, i, &format!("{}:30081/TCP", node.underlay_ip()), 0);
        let target = std::net::SocketAddr::from((node.underlay_ip(), 30081));
        let refused = underlay
            .run(|| std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5)))
            .expect("enter the underlay");
        assert_eq!(
            refused.map(drop).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "node {}",
            node.name()
        );
        wait_programmed(&cluster, i, &format!("{}:30082/UDP", node.underlay_ip()), 0);
        let udp = underlay
            .run(|| UdpSocket::bind((host, 0)))
            .expect("enter")
            .expect("bind");
        udp.connect((node.underlay_ip(), 30082)).expect("connect");
        udp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        udp.send(b"ping").expect("send");
        let mut buf = [0u8; 64];
        assert_eq!(
            udp.recv(&mut buf).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "node {}: UDP",
            node.name()
        );
    }

    // Maglev on request: a flow gets the same backend through every node.
    cluster
        .apply(&json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "hashed", "namespace": "default",
                         "annotations": {"berth.dev/lb-algorithm": "maglev"}},
            "spec": {"type": "NodePort", "ports": [
                {"name": "udp", "port": 53, "targetPort": UDP_PORT, "protocol": "UDP", "nodePort": 30054},
            ]},
        }))
        .expect("create the Maglev Service");
    let addresses: Vec<Value> = backends
        .iter()
        .map(
            |b| json!({"addresses": [b.ip.to_string()], "conditions": ready(), "nodeName": b.node}),
        )
        .collect();
    cluster
        .apply(&json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "hashed-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "hashed"}},
            "addressType": "IPv4",
            "ports": [{"name": "udp", "port": UDP_PORT, "protocol": "UDP"}],
            "endpoints": addresses,
        }))
        .expect("write its EndpointSlice");
    for (i, node) in nodes.iter().enumerate() {
        wait_programmed(&cluster, i, &format!("{}:30054/UDP", node.underlay_ip()), 3);
    }
    let explained = explain(
        &cluster,
        &format!("{}:30054/UDP", nodes[0].underlay_ip()),
        &[],
    );
    assert!(explained.contains("Maglev"), "{explained}");
    // Operators see how full each preallocated map is.
    let metrics = cluster.agent_metrics(0);
    let fill = |map: &str| {
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("berth_agent_lb_map_fill_ratio{{map=\"{map}\"}} "))
            })
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert!(
        fill("lb4_services").is_some_and(|f| f > 0.0 && f < 1.0),
        "{metrics}"
    );
    assert!(fill("lb4_maglev").is_some_and(|f| f > 0.0), "{metrics}");
    let mut chosen = BTreeMap::new();
    for port in 41000..41012u16 {
        let udp = underlay
            .run(|| UdpSocket::bind((host, port)))
            .expect("enter")
            .expect("bind a fixed source port");
        udp.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let answers: Vec<String> = nodes
            .iter()
            .map(|node| {
                udp.send_to(b"ping", (node.underlay_ip(), 30054))
                    .expect("send");
                let mut buf = [0u8; 64];
                let (n, _) = udp.recv_from(&mut buf).expect("a UDP answer");
                String::from_utf8_lossy(&buf[..n]).into_owned()
            })
            .collect();
        assert!(
            answers.iter().all(|a| *a == answers[0]),
            "flow from port {port}: nodes chose {answers:?}"
        );
        // `explain --from` names the backend the flow got, from the same hash.
        let frontend = format!("{}:30054/UDP", nodes[0].underlay_ip());
        let from = format!("{host}:{port}");
        let explained = explain(&cluster, &frontend, &["--from", &from]);
        let got = backends
            .iter()
            .find(|b| b.name == answers[0])
            .expect("a known backend");
        assert!(
            explained.contains(&format!("from {from}: a new flow hashes to Maglev entry"))
                && explained.contains(&format!("{}:{UDP_PORT}/UDP (on every node)", got.ip)),
            "{} answered; explain says:\n{explained}",
            got.name
        );
        assert!(
            explained.contains(&format!("tracked: {from} -> {}:{UDP_PORT}", got.ip)),
            "{explained}"
        );
        chosen.insert(port, answers[0].clone());
    }
    let distinct: std::collections::BTreeSet<&String> = chosen.values().collect();
    assert!(
        distinct.len() >= 2,
        "flows spread over backends: {chosen:?}"
    );
}
