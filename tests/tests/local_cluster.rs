//! `berth-testbed up` / `down` (what `cargo xtask up` / `down` run): the
//! control plane answers kubectl, every node's agent registers it Ready
//! with its own pod CIDR and keeps its lease, and `down` leaves nothing
//! behind.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output};

use berth_tests::{leftovers, require_root, RunPrefix};

fn testbed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth-testbed"))
}

/// A workspace binary, built beside berth-testbed by `cargo test --workspace`.
fn workspace_bin(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_berth-testbed")).with_file_name(name);
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn kubectl(kubeconfig: &str, args: &[&str]) -> Output {
    Command::new("kubectl")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn http_get(port: u16, path: &str) -> String {
    TcpStream::connect(("127.0.0.1", port))
        .and_then(|mut conn| {
            write!(
                conn,
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )?;
            let mut body = String::new();
            conn.read_to_string(&mut body)?;
            Ok(body)
        })
        .unwrap_or_default()
}

fn up(prefix: &RunPrefix, listen: &str, metrics_port: u16) -> Output {
    testbed()
        .args([
            "up",
            "--name",
            prefix.as_str(),
            "--nodes",
            "2",
            "--listen",
            listen,
        ])
        .args([
            "--agent-metrics-port",
            &metrics_port.to_string(),
            "--control-bin",
        ])
        .arg(workspace_bin("berth-control"))
        .arg("--agent-bin")
        .arg(workspace_bin("berth-agent"))
        .output()
        .expect("run berth-testbed up")
}

#[test]
fn up_serves_kubectl_with_ready_nodes_and_down_removes_everything() {
    require_root();
    let prefix = RunPrefix::random();
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics_port = free_port();
    let down = || {
        testbed()
            .args(["down", "--name", prefix.as_str()])
            .output()
            .expect("run down")
    };
    let started = up(&prefix, &listen, metrics_port);
    if !started.status.success() {
        down();
        panic!("up failed: {}", String::from_utf8_lossy(&started.stderr));
    }
    let stdout = text(&started);
    let kubeconfig = format!("/var/lib/berth/{prefix}/control/admin.kubeconfig");

    // Gather everything first, so `down` runs whatever the assertions say.
    let listed = kubectl(&kubeconfig, &["get", "nodes,namespaces"]);
    let wide = text(&kubectl(&kubeconfig, &["get", "nodes", "-o", "wide"]));
    let cidrs = text(&kubectl(
        &kubeconfig,
        &["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"],
    ));
    let leases = text(&kubectl(
        &kubeconfig,
        &["get", "leases", "-n", "kube-node-lease", "-o", "name"],
    ));
    let metrics = http_get(metrics_port, "/metrics");
    let second_up = up(&prefix, &listen, metrics_port);
    let removed = down();

    assert!(
        stdout.contains(&kubeconfig),
        "the kubeconfig path is printed:\n{stdout}"
    );
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(
        text(&listed).contains("namespace/default"),
        "{}",
        text(&listed)
    );
    for (node, ip) in [("n0", "172.30.0.1"), ("n1", "172.30.0.2")] {
        let line = wide
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("{node} missing:\n{wide}"));
        assert!(line.contains(" Ready ") && line.contains(ip), "{line}");
    }
    let mut cidrs: Vec<&str> = cidrs.split_whitespace().collect();
    cidrs.sort();
    assert_eq!(cidrs, ["10.244.0.0/24", "10.244.1.0/24"]);
    assert!(
        leases.contains("lease.coordination.k8s.io/n0")
            && leases.contains("lease.coordination.k8s.io/n1"),
        "{leases}"
    );
    assert!(
        metrics.contains("berth_agent_heartbeats_total"),
        "{metrics}"
    );
    assert!(
        !second_up.status.success(),
        "a second up of the same cluster is refused"
    );

    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(leftovers(&prefix).expect("leftovers"), Vec::<String>::new());
    assert!(!PathBuf::from(format!("/var/lib/berth/{prefix}")).exists());
    assert!(!PathBuf::from(format!("/run/berth/{prefix}")).exists());
    let gone = kubectl(&kubeconfig, &["get", "nodes", "--request-timeout=2s"]);
    assert!(!gone.status.success(), "the control plane is stopped");
    assert_eq!(
        http_get(metrics_port, "/metrics"),
        "",
        "the agents are stopped"
    );
}
