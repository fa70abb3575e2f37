//! `cargo xtask bench lb`: the service datapath against the paths it
//! replaces, in one run on a simulated node:
//! - request/response latency (p50/p99) pod → ClusterIP → pod through the
//!   eBPF socket load balancer, against pod → pod direct, and against DNAT
//!   rules laid out as kube-proxy's iptables mode lays them out, with 10,
//!   1 000 and 10 000 services programmed; both over one long connection
//!   and with a new connection per request (where rule count matters).
//!   The three paths are measured back to back in each of several rounds
//!   (medians of the rounds; ratios are medians of each round's ratio),
//!   client and server on fixed CPUs kept out of idle. kube-proxy's rules
//!   apply to a second client pod only, so that direct and eBPF run as on a
//!   node without kube-proxy;
//! - the time to program 10 000 services × 10 endpoints into the maps,
//!   against `iptables-restore` of the equivalent rules.
//!
//! Prints numbers and ratios and writes a plot (`target/bench-lb.svg`);
//! asserts nothing. Needs root.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_ebpf::model::{Backend, Frontend, Protocol};
use berth_ebpf::{LbMaps, MapSizes, SockLb, SockLbConfig};
use berth_tests::bench::{cpus, median, pin_thread};
use berth_tests::cni::{call, workspace_bin};
use berth_tests::{require_root, Netns, Node, Testbed, TestbedConfig};
use serde_json::json;

const SCALES: [usize; 3] = [10, 1_000, 10_000];
const ENDPOINTS: usize = 10;
const PORT: u16 = 8080;
/// CPU of the probe (client) and of the echo server's threads.
const CLIENT_CPU: &str = "0";
const SERVER_CPU: usize = 1;
/// Interleaved rounds per path and scale.
const ROUNDS: usize = 16;
/// Request/response exchanges per round over one connection.
const ROUND_TRIPS: &str = "800";
/// Connections per round with a new connection per request.
const CONNECTIONS: &str = "150";

fn main() {
    require_root();
    let config = TestbedConfig::new(1);
    let testbed = Testbed::new(&config).expect("testbed");
    let node = &testbed.nodes()[0];
    let data = std::env::temp_dir().join(format!("{}-bench-lb", config.prefix));
    let (client, _) = pod(node, &data, "client");
    // kube-proxy's rules apply to this pod's traffic only, so all three
    // paths are measured side by side in the same rounds.
    let (ipt_client, ipt_client_ip) = pod(node, &data, "ipt-client");
    let (server, server_ip) = pod(node, &data, "server");
    echo_server(&server, server_ip);
    let lb = SockLb::attach(
        &SockLbConfig {
            pin_dir: node.pin_dir().to_path_buf(),
            map_sizes: MapSizes {
                backends: 262_144,
                ..MapSizes::default()
            },
        },
        node.cgroup().path(),
    )
    .expect("attach the socket load balancer");
    let mut maps = lb.maps().expect("maps");
    let real = Backend {
        addr: SocketAddrV4::new(server_ip, PORT),
        proto: Protocol::Tcp,
    };

    println!("Service datapath on a simulated node (netns on one kernel, 2 cores); client and server pods on one node.");
    println!("Probe service: the last of N; N-1 others with {ENDPOINTS} endpoints each; iptables rules as kube-proxy lays them out.\n");
    let direct = SocketAddrV4::new(server_ip, PORT).to_string();
    let direct = direct.as_str();
    let _awake = KeepAwake::start();
    let mut rows = Vec::new();
    let mut programming = None;
    for n in SCALES {
        clear_maps(&mut maps);
        let (ebpf_vip, ebpf_time) = program_maps(&mut maps, n, real);
        let (ipt_vip, ipt_time) = program_iptables(node, n, real, ipt_client_ip);
        if n == 10_000 {
            programming = Some((ebpf_time, ipt_time));
        }
        let (ebpf, ipt) = (ebpf_vip.to_string(), ipt_vip.to_string());
        let (latency, ratios) = rounds(
            node,
            [
                (&client, direct, true),
                (&client, &ebpf, true),
                (&ipt_client, &ipt, false),
            ],
        );
        rows.push(Row {
            services: n,
            latency,
            ratios,
        });
    }
    report(&rows);
    if let Some((ebpf, ipt)) = programming {
        println!("Programming 10 000 services x {ENDPOINTS} endpoints");
        println!(
            "  eBPF maps (LbMaps, batched)     {:>10.3} s",
            ebpf.as_secs_f64()
        );
        println!(
            "  iptables-restore (nft backend)  {:>10.3} s",
            ipt.as_secs_f64()
        );
        println!(
            "  ratio iptables/eBPF             {:>10.1}x   (goals: >= 100x, eBPF under 1 s)",
            ipt.as_secs_f64() / ebpf.as_secs_f64()
        );
    }
    let svg = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-lb.svg");
    std::fs::write(&svg, plot(&rows)).expect("write the plot");
    println!("\nPlot: {}", svg.display());
    flush_nat(node);
    let _ = std::fs::remove_dir_all(&data);
}

/// The paths at one scale: direct, eBPF, iptables DNAT.
struct Row {
    services: usize,
    latency: [Latency; 3],
    /// eBPF and iptables p50 over direct's, each the median of the
    /// rounds' ratios: (one connection, new connections).
    ratios: [[f64; 2]; 2],
}

/// Busy loops at the lowest scheduling class (SCHED_IDLE), one per CPU:
/// they run only when nothing else wants the CPU and give way at once, so
/// the CPUs never halt and a wake-up never pays the virtual machine's
/// exit from idle, a delay larger and more variable than the paths
/// measured. Stopped when dropped.
struct KeepAwake(Vec<Child>);

impl KeepAwake {
    fn start() -> Self {
        KeepAwake(
            (0..cpus())
                .map(|cpu| {
                    Command::new("chrt")
                        .args(["--idle", "0", "taskset", "--cpu-list"])
                        .arg(cpu.to_string())
                        .args(["sh", "-c", "while :; do :; done"])
                        .spawn()
                        .expect("chrt and taskset (util-linux)")
                })
                .collect(),
        )
    }
}

impl Drop for KeepAwake {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Empties the node's nat table.
fn flush_nat(node: &Node) {
    let mut flush = node.netns().command("iptables").expect("iptables");
    berth_tests::run(flush.args(["-t", "nat", "-F"])).expect("flush nat");
}

/// Latency of three paths `(client pod, target, in the node's cgroup)`,
/// measured in `ROUNDS` rounds, the paths back to back in each, in an
/// order that rotates from round to round: per path, (one connection, a
/// new connection per request), each the (p50, p99) medians over the
/// rounds; and the second and third paths' p50 over the first's, each the
/// median of the rounds' ratios (drift between rounds cancels out).
fn rounds(node: &Node, paths: [(&Netns, &str, bool); 3]) -> ([Latency; 3], [[f64; 2]; 2]) {
    let mut samples = [(); 3].map(|_| [(); 4].map(|_| Vec::new()));
    let mut ratios = [(); 2].map(|_| [Vec::new(), Vec::new()]);
    for round in 0..ROUNDS {
        for (k, new) in [false, true].into_iter().enumerate() {
            let mut p50s = [0.0; 3];
            for i in 0..3 {
                let path = (round + i) % 3;
                let (client, target, in_cgroup) = paths[path];
                let (p50, p99) = rr(node, client, target, in_cgroup, new);
                samples[path][2 * k].push(p50);
                samples[path][2 * k + 1].push(p99);
                p50s[path] = p50;
            }
            for other in 0..2 {
                ratios[other][k].push(p50s[other + 1] / p50s[0]);
            }
        }
    }
    let latency = samples.map(|mut s| {
        let [a, b, c, d] = &mut s;
        ((median(a), median(b)), (median(c), median(d)))
    });
    (latency, ratios.map(|r| r.map(|mut v| median(&mut v))))
}

/// (one connection, new connections), each (p50, p99) in µs.
type Latency = ((f64, f64), (f64, f64));

/// A pod wired by berth-cni on `node`.
fn pod(node: &Node, data: &Path, name: &str) -> (Netns, Ipv4Addr) {
    let netns = node.add_pod(name).expect("pod");
    let conf = json!({
        "cniVersion": "1.1.0", "name": "bench", "type": "berth-cni", "subnet": "10.244.0.0/24",
        "mtu": 1500, "dataDir": data,
    });
    let path = netns.path().display().to_string();
    let vars = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", name),
        ("CNI_NETNS", path.as_str()),
        ("CNI_IFNAME", "eth0"),
    ];
    let reply = call(
        &workspace_bin("berth-cni"),
        node.netns(),
        &vars,
        conf.to_string().as_bytes(),
    )
    .expect("berth-cni");
    assert!(reply.success, "{}", reply.json);
    let ip = reply.json["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .expect("address");
    (netns, ip)
}

/// A one-byte echo server in `pod`.
fn echo_server(pod: &Netns, ip: Ipv4Addr) {
    let listener = pod
        .run(|| TcpListener::bind((ip, PORT)))
        .expect("enter")
        .expect("listen");
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = pin_thread(SERVER_CPU);
                let mut conn = conn;
                let _ = conn.set_nodelay(true);
                let mut byte = [0u8; 1];
                while conn.read_exact(&mut byte).is_ok() {
                    if conn.write_all(&byte).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

fn vip(base: [u8; 2], i: usize) -> Ipv4Addr {
    Ipv4Addr::new(base[0], base[1], (i / 250) as u8, (i % 250 + 1) as u8)
}

fn fake_backend(i: usize, e: usize) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(10, 250, (i / 250) as u8, (i % 250) as u8),
        9000 + e as u16,
    )
}

fn clear_maps(maps: &mut LbMaps) {
    for entry in maps.services().expect("list") {
        maps.remove_service(&entry.frontend).expect("remove");
    }
}

/// Programs `n` services (the last one the probe, backed by the server);
/// returns the probe's address and the time it took.
fn program_maps(maps: &mut LbMaps, n: usize, real: Backend) -> (SocketAddrV4, Duration) {
    let services: Vec<(Frontend, Vec<Backend>)> = (0..n)
        .map(|i| {
            let frontend = Frontend::new(vip([10, 96], i), 80, Protocol::Tcp);
            let backends: Vec<Backend> = if i == n - 1 {
                vec![real]
            } else {
                (0..ENDPOINTS)
                    .map(|e| Backend {
                        addr: fake_backend(i, e),
                        proto: Protocol::Tcp,
                    })
                    .collect()
            };
            (frontend, backends)
        })
        .collect();
    // Timed like iptables-restore: the call that programs, not the making
    // of its input.
    let started = Instant::now();
    for outcome in maps.upsert_services(&services).expect("program") {
        outcome.expect("a service fits");
    }
    (
        SocketAddrV4::new(vip([10, 96], n - 1), 80),
        started.elapsed(),
    )
}

/// kube-proxy's iptables layout for `n` services of `ENDPOINTS`
/// endpoints (the last one the probe, backed by the server), applied in
/// the node with one iptables-restore; returns the probe's address and the
/// restore's time.
fn program_iptables(
    node: &Node,
    n: usize,
    real: Backend,
    client: Ipv4Addr,
) -> (SocketAddrV4, Duration) {
    let mut chains = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    let mut rules = String::from(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    // As kube-proxy's jump, but for one client pod only (see main).
    rules += &format!(
        "-A PREROUTING -s {client}/32 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
    );
    for i in 0..n {
        let svc = format!("KUBE-SVC-{i:012X}");
        chains += &format!(":{svc} - [0:0]\n");
        let ip = vip([10, 100], i);
        rules += &format!(
            "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"default/s{i}:http cluster IP\" -m tcp --dport 80 -j {svc}\n"
        );
        let endpoints: Vec<SocketAddrV4> = if i == n - 1 {
            vec![real.addr]
        } else {
            (0..ENDPOINTS).map(|e| fake_backend(i, e)).collect()
        };
        let count = endpoints.len();
        for (e, endpoint) in endpoints.iter().enumerate() {
            let sep = format!("KUBE-SEP-{i:08X}{e:04X}");
            chains += &format!(":{sep} - [0:0]\n");
            if e + 1 < count {
                let probability = 1.0 / (count - e) as f64;
                rules += &format!("-A {svc} -m statistic --mode random --probability {probability:.11} -j {sep}\n");
            } else {
                rules += &format!("-A {svc} -j {sep}\n");
            }
            rules += &format!("-A {sep} -p tcp -m tcp -j DNAT --to-destination {endpoint}\n");
        }
    }
    let script = chains + &rules + "COMMIT\n";
    flush_nat(node);
    let mut restore = node
        .netns()
        .command("iptables-restore")
        .expect("iptables-restore");
    restore.stdin(Stdio::piped()).stdout(Stdio::null());
    let started = Instant::now();
    let mut child = restore
        .spawn()
        .expect("iptables-restore (package iptables)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write rules");
    assert!(
        child.wait().expect("iptables-restore").success(),
        "iptables-restore failed"
    );
    (
        SocketAddrV4::new(vip([10, 100], n - 1), 80),
        started.elapsed(),
    )
}

/// p50 and p99 round-trip time (µs) from the client pod to `target`.
fn rr(
    node: &Node,
    client: &Netns,
    target: &str,
    in_cgroup: bool,
    new_connections: bool,
) -> (f64, f64) {
    // Client and server on fixed, different CPUs: every exchange then
    // crosses CPUs alike, whatever the scheduler would have chosen.
    let mut cmd: Command = client.command("taskset").expect("probe");
    cmd.args(["--cpu-list", CLIENT_CPU]);
    cmd.arg(workspace_bin("berth-testbed"));
    let count = if new_connections {
        CONNECTIONS
    } else {
        ROUND_TRIPS
    };
    cmd.args(["probe", "rr", "--target", target, "--count", count]);
    if new_connections {
        cmd.arg("--new-connections");
    }
    if in_cgroup {
        node.cgroup().add_on_spawn(&mut cmd).expect("cgroup");
    }
    let out = berth_tests::run(&mut cmd).expect("probe rr");
    let mut numbers = out.split_whitespace().filter_map(|v| v.parse::<f64>().ok());
    (
        numbers.next().unwrap_or(f64::NAN),
        numbers.next().unwrap_or(f64::NAN),
    )
}

fn report(rows: &[Row]) {
    for (title, pick) in [
        ("one connection, 1-byte request/response", 0),
        (
            "a new connection per request (connect + 1-byte exchange)",
            1,
        ),
    ] {
        println!("Latency, {title}: p50 / p99 in microseconds");
        println!(
            "  {:>8}  {:>17}  {:>17}  {:>17}  {:>12}  {:>12}",
            "services", "direct", "eBPF ClusterIP", "iptables DNAT", "eBPF/direct", "ipt/direct"
        );
        for row in rows {
            let [d, e, i] = row.latency.map(|l| if pick == 0 { l.0 } else { l.1 });
            println!(
                "  {:>8}  {:>8.1} / {:>6.1}  {:>8.1} / {:>6.1}  {:>8.1} / {:>6.1}  {:>12.3}  {:>12.3}",
                row.services, d.0, d.1, e.0, e.1, i.0, i.1, row.ratios[0][pick], row.ratios[1][pick]
            );
        }
        println!("  (medians of {ROUNDS} rounds, the three paths back to back in each; a ratio is the median of the rounds' p50 ratios; goal: eBPF <= 1.03 x direct, flat as services grow)\n");
    }
}

/// A line chart of p50 latency with a new connection per request, by
/// service count, for the three paths.
fn plot(rows: &[Row]) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 400.0, 70.0, 50.0, 40.0, 160.0);
    let max = rows
        .iter()
        .flat_map(|r| r.latency.iter().map(|l| (l.1).0))
        .fold(1.0_f64, f64::max)
        * 1.15;
    let x = |i: usize| left + (w - left - right) * i as f64 / (rows.len().max(2) - 1) as f64;
    let y = |v: f64| h - bottom - (h - bottom - top) * v / max;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">Service latency, new connection per request (p50, us)</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    for tick in 0..=4 {
        let v = max * tick as f64 / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{v:.0}</text>\n",
            left - 6.0,
            y(v) + 4.0
        );
    }
    for (i, row) in rows.iter().enumerate() {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} services</text>\n",
            x(i),
            h - bottom + 20.0,
            row.services
        );
    }
    for (k, (name, colour)) in [
        ("direct", "#555555"),
        ("eBPF ClusterIP", "#1f77b4"),
        ("iptables DNAT", "#d62728"),
    ]
    .iter()
    .enumerate()
    {
        let points: Vec<String> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| format!("{:.1},{:.1}", x(i), y((r.latency[k].1).0)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{colour}\">{name}</text>\n",
            points.join(" "),
            w - right + 10.0,
            top + 20.0 * k as f64 + 10.0
        );
    }
    svg + "</svg>\n"
}
