//! `cargo xtask bench overlay`: the pod network on two simulated nodes with
//! berth-control and agents, in one run:
//! - TCP throughput (iperf3) pod → pod across nodes (VXLAN) against the
//!   same-node path (veth + bridge), client and server on different CPUs;
//!   and each path's CPU cost per byte: client, server and the whole path
//!   on one CPU, with a congestion control that does not pace;
//! - request/response latency (1-byte TCP ping-pong) on both paths, with
//!   client and server on one CPU and on two;
//! - CNI ADD and DEL latency of berth-cni against Debian's reference
//!   `bridge` + `host-local` plugins (containernetworking-plugins), each
//!   called as a runtime calls it (a process per call, in the node).
//!
//! Prints numbers and ratios; asserts nothing (speed goals are read, not
//! tested). Needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use berth_tests::bench::{cpus, median, pin_thread};
use berth_tests::cluster::{Cluster, ClusterConfig};
use berth_tests::cni::{call, workspace_bin};
use berth_tests::{require_root, Netns, Node, Testbed, TestbedConfig};
use serde_json::{json, Value};

const IPERF_SECONDS: u32 = 4;
const IPERF_ROUNDS: usize = 5;
const CPU_COST_ROUNDS: usize = 5;
const ROUND_TRIPS: usize = 20_000;
const CNI_CALLS: usize = 100;
/// Where Debian installs the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

fn main() {
    require_root();
    let config = TestbedConfig::new(2);
    let cluster = Cluster::start(
        Testbed::new(&config).expect("testbed"),
        ClusterConfig::beside_current_exe(&config.prefix),
    )
    .expect("cluster");
    let cni = workspace_bin("berth-cni");
    let (client, _) = cluster.add_pod(&cni, 0, "client").expect("client pod");
    let (local, local_ip) = cluster.add_pod(&cni, 0, "local").expect("same-node pod");
    let (remote, remote_ip) = cluster.add_pod(&cni, 1, "remote").expect("other-node pod");
    cluster.wait_overlay(0, &[1]).expect("overlay");
    cluster.wait_overlay(1, &[0]).expect("overlay");

    println!(
        "Pod network on 2 simulated nodes (netns on one kernel, {} CPUs; underlay = veth + bridge, MTU 1500)\n",
        cpus()
    );
    throughput(
        &client,
        [
            ("same node (veth + bridge)", &local, local_ip),
            ("cross node (VXLAN)", &remote, remote_ip),
        ],
    );
    latency(
        &client,
        [
            ("same node", &local, local_ip),
            ("cross node", &remote, remote_ip),
        ],
    );
    cni_latency(&cni, &cluster.testbed().nodes()[0]);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// An iperf3 server in `pod`, stopped when dropped.
struct IperfServer(Child);

impl Drop for IperfServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn iperf_server(pod: &Netns, ip: Ipv4Addr) -> IperfServer {
    let child = pod
        .command("iperf3")
        .expect("command")
        .args(["-s", "-B", &ip.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 -s (package iperf3)");
    std::thread::sleep(Duration::from_millis(300));
    IperfServer(child)
}

/// Where a run places its two ends and which congestion control it uses.
struct Setup {
    /// CPU of the client; of the server.
    cpus: (usize, usize),
    /// `None`: the namespace's default.
    congestion: Option<&'static str>,
}

/// One iperf3 run: Gbit/s received and segments retransmitted.
fn iperf(client: &Netns, server: Ipv4Addr, setup: &Setup) -> (f64, f64) {
    let mut command = client.command("iperf3").expect("command");
    command.args([
        "-c",
        &server.to_string(),
        "-t",
        &IPERF_SECONDS.to_string(),
        "-J",
        "-A",
        &format!("{},{}", setup.cpus.0, setup.cpus.1),
    ]);
    if let Some(congestion) = setup.congestion {
        command.args(["-C", congestion]);
    }
    let out = command.output().expect("iperf3 -c");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let received = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| {
            panic!(
                "iperf3 to {server} failed: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
    let retransmits = report["end"]["sum_sent"]["retransmits"]
        .as_f64()
        .unwrap_or(f64::NAN);
    (received / 1e9, retransmits)
}

/// Medians over interleaved rounds (drift on the machine affects both
/// paths alike) of throughput and retransmits, per path.
fn rounds(
    client: &Netns,
    paths: &[(&str, &Netns, Ipv4Addr); 2],
    setup: &Setup,
    count: usize,
) -> [(f64, f64); 2] {
    let mut results = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    for _ in 0..count {
        for (i, (_, _, ip)) in paths.iter().enumerate() {
            let (rate, retransmits) = iperf(client, *ip, setup);
            results[i].0.push(rate);
            results[i].1.push(retransmits);
        }
    }
    results.map(|(mut rates, mut retransmits)| (median(&mut rates), median(&mut retransmits)))
}

/// The namespace's default TCP congestion control.
fn congestion_control(netns: &Netns) -> String {
    netns
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control"))
        .expect("enter the pod")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

fn throughput(client: &Netns, paths: [(&str, &Netns, Ipv4Addr); 2]) {
    let _servers: Vec<IperfServer> = paths
        .iter()
        .map(|(_, pod, ip)| iperf_server(pod, *ip))
        .collect();
    let other_cpu = usize::from(cpus() > 1);
    let default_cc = congestion_control(client);
    let [same, cross] = rounds(
        client,
        &paths,
        &Setup {
            cpus: (0, other_cpu),
            congestion: None,
        },
        IPERF_ROUNDS,
    );
    println!(
        "TCP throughput, pod -> pod (iperf3, {IPERF_SECONDS} s x {IPERF_ROUNDS} rounds, median; client on CPU 0, server on CPU {other_cpu}; congestion control: the pods' default, {default_cc})"
    );
    for (label, (rate, retransmits)) in [(paths[0].0, same), (paths[1].0, cross)] {
        println!("  {label:<28} {rate:>7.2} Gbit/s   {retransmits:>7.0} segments retransmitted");
    }
    println!(
        "  ratio cross/same             {:>7.2}   (goal >= 0.90)",
        cross.0 / same.0
    );
    // Both ends and every hop of the path on one CPU, with a congestion
    // control that does not pace (cubic): the CPU is the only limit, so the
    // ratio is the paths' cost per byte, free of scheduling and of the
    // vCPUs' wake-up latency that shape the run above.
    let [same, cross] = rounds(
        client,
        &paths,
        &Setup {
            cpus: (other_cpu, other_cpu),
            congestion: Some("cubic"),
        },
        CPU_COST_ROUNDS,
    );
    println!(
        "CPU cost per byte (client, server and the whole path on CPU {other_cpu}; cubic, which does not pace: the CPU is the only limit; {CPU_COST_ROUNDS} rounds, median)"
    );
    for (label, (rate, _)) in [(paths[0].0, same), (paths[1].0, cross)] {
        println!("  {label:<28} {rate:>7.2} Gbit/s");
    }
    println!(
        "  cross-node cost per byte     {:>7.2} x same-node",
        same.0 / cross.0
    );
    println!("  (both simulated nodes share this machine's CPUs: the cross-node path's encapsulation, underlay and decapsulation run beside everything else; on separate machines each node's half runs on its own CPUs)\n");
}

/// Round-trip times (µs) of 1-byte exchanges over one TCP connection, the
/// client's thread on CPU `cpus.0`, the server's on `cpus.1`.
fn round_trips(client: &Netns, server: &Netns, ip: Ipv4Addr, cpus: (usize, usize)) -> Vec<f64> {
    let listener = server
        .run(|| TcpListener::bind((ip, 0)))
        .expect("enter")
        .expect("listen");
    let target = listener.local_addr().expect("address");
    let echo = std::thread::spawn(move || {
        pin_thread(cpus.1).expect("pin the server");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_nodelay(true).expect("nodelay");
        let mut byte = [0u8; 1];
        while conn.read_exact(&mut byte).is_ok() {
            if conn.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut conn = client
        .run(|| TcpStream::connect(target))
        .expect("enter")
        .expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let samples = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_thread(cpus.0).expect("pin the client");
                let mut byte = [0u8; 1];
                let mut samples = Vec::with_capacity(ROUND_TRIPS);
                for i in 0..ROUND_TRIPS + 1000 {
                    let start = Instant::now();
                    conn.write_all(&[1]).expect("write");
                    conn.read_exact(&mut byte).expect("read");
                    // The first 1000 warm the path up (ARP, caches).
                    if i >= 1000 {
                        samples.push(start.elapsed().as_secs_f64() * 1e6);
                    }
                }
                samples.sort_by(f64::total_cmp);
                samples
            })
            .join()
            .expect("client thread")
    });
    drop(conn);
    let _ = echo.join();
    samples
}

fn latency(client: &Netns, paths: [(&str, &Netns, Ipv4Addr); 2]) {
    let other_cpu = usize::from(cpus() > 1);
    // On one CPU the round trip is the path's own time; across CPUs it adds
    // a wake-up of the other (on this VM a halted vCPU's wake-up, tens of
    // µs, dominates).
    for (placement, cpus) in [
        ("client and server on one CPU", (other_cpu, other_cpu)),
        ("client and server on two CPUs", (0, other_cpu)),
    ] {
        println!(
            "Request/response latency, pod -> pod (1-byte TCP ping-pong, {ROUND_TRIPS} round trips; {placement})"
        );
        let same = round_trips(client, paths[0].1, paths[0].2, cpus);
        let cross = round_trips(client, paths[1].1, paths[1].2, cpus);
        for (label, samples) in [(paths[0].0, &same), (paths[1].0, &cross)] {
            println!(
                "  {label:<28} p50 {:>6.1} us   p99 {:>6.1} us",
                percentile(samples, 0.5),
                percentile(samples, 0.99)
            );
        }
        println!(
            "  ratio cross/same             p50 {:>6.2}      p99 {:>6.2}\n",
            percentile(&cross, 0.5) / percentile(&same, 0.5),
            percentile(&cross, 0.99) / percentile(&same, 0.99)
        );
    }
}

/// ADD and DEL times (ms) of `plugin` with `conf`, on fresh pod namespaces,
/// and for each DEL the time (ms) until the pair's host end was gone from
/// the node (waited for before the next call).
fn cni_calls(
    plugin: &Path,
    node: &Node,
    conf: &Value,
    cni_path: &str,
    tag: &str,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let stdin = conf.to_string();
    let (mut adds, mut dels, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    let pods: Vec<Netns> = (0..10)
        .map(|i| node.add_pod(&format!("{tag}{i}")).expect("pod"))
        .collect();
    for i in 0..CNI_CALLS {
        let pod = &pods[i % pods.len()];
        let netns = pod.path().display().to_string();
        let id = format!("{tag}-{i}");
        let mut host_end = String::new();
        for (command, times) in [("ADD", &mut adds), ("DEL", &mut dels)] {
            let vars = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id.as_str()),
                ("CNI_NETNS", netns.as_str()),
                ("CNI_IFNAME", "eth0"),
                ("CNI_PATH", cni_path),
            ];
            let start = Instant::now();
            let reply = call(plugin, node.netns(), &vars, stdin.as_bytes()).expect("run plugin");
            times.push(start.elapsed().as_secs_f64() * 1e3);
            assert!(
                reply.success,
                "{} {command}: {} {}",
                plugin.display(),
                reply.json,
                reply.stderr
            );
            if command == "ADD" {
                host_end = reply.json["interfaces"][1]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
            } else {
                wait_gone(node, &host_end);
                gone.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    adds.sort_by(f64::total_cmp);
    dels.sort_by(f64::total_cmp);
    gone.sort_by(f64::total_cmp);
    (adds, dels, gone)
}

/// Waits until the node has no link named `name` (10 s at most).
fn wait_gone(node: &Node, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    node.netns()
        .run(|| {
            while nix::net::if_::if_nametoindex(name).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        })
        .expect("enter the node");
}

fn cni_latency(cni: &Path, node: &Node) {
    let dir = std::env::temp_dir().join(format!("berth-bench-cni-{}", std::process::id()));
    let berth = json!({
        "cniVersion": "1.1.0", "name": "bench", "type": "berth-cni", "bridge": "benchbr0",
        "subnet": "10.244.200.0/24", "clusterCIDR": "10.244.0.0/16", "ipMasq": true, "mtu": 1450,
        "dataDir": dir.join("berth"),
    });
    let reference = json!({
        "cniVersion": "1.0.0", "name": "ref", "type": "bridge", "bridge": "refbr0", "isGateway": true,
        "ipMasq": true, "hairpinMode": true, "mtu": 1450,
        "ipam": {"type": "host-local", "subnet": "10.244.201.0/24", "dataDir": dir.join("ref")},
    });
    println!(
        "CNI ADD and DEL latency ({CNI_CALLS} of each, a process per call in the node's namespace)"
    );
    let (adds, dels, gone) = cni_calls(cni, node, &berth, "/opt/cni/bin", "b");
    let row = |label: &str, adds: &[f64], dels: &[f64], gone: &[f64]| {
        println!(
            "  {label:<28} ADD p50 {:>6.2} ms  p99 {:>6.2} ms   DEL p50 {:>6.2} ms  p99 {:>6.2} ms   veth gone p50 {:>6.2} ms",
            percentile(adds, 0.5),
            percentile(adds, 0.99),
            percentile(dels, 0.5),
            percentile(dels, 0.99),
            percentile(gone, 0.5)
        );
    };
    row("berth-cni", &adds, &dels, &gone);
    let bridge = Path::new(REFERENCE_PLUGINS).join("bridge");
    if bridge.exists() {
        let (ref_adds, ref_dels, ref_gone) =
            cni_calls(&bridge, node, &reference, REFERENCE_PLUGINS, "r");
        row("bridge + host-local", &ref_adds, &ref_dels, &ref_gone);
        println!(
            "  ratio berth/reference        ADD p50 {:>6.2}                DEL p50 {:>6.2}",
            percentile(&adds, 0.5) / percentile(&ref_adds, 0.5),
            percentile(&dels, 0.5) / percentile(&ref_dels, 0.5)
        );
    } else {
        println!("  bridge + host-local          not measured: {} is missing (package containernetworking-plugins)", bridge.display());
    }
    println!("  (berth-cni's DEL takes the pair out of service and releases its address; a detached reaper deletes it, off DEL's path: the kernel's device teardown waits for an RCU barrier. 'veth gone': from the start of DEL until the host end no longer exists)");
    let verdict = |v: f64| if v < 10.0 { "met" } else { "missed" };
    println!(
        "  goal: ADD and DEL each under 10 ms -> ADD {} (p50 {:.2} ms), DEL {} (p50 {:.2} ms)",
        verdict(percentile(&adds, 0.5)),
        percentile(&adds, 0.5),
        verdict(percentile(&dels, 0.5)),
        percentile(&dels, 0.5)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
