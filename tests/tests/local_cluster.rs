//! `berth-testbed up` / `down` (what `cargo xtask up` / `down` run): the
//! control plane answers kubectl, the nodes exist, and `down` leaves
//! nothing behind.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

use berth_tests::{leftovers, require_root, RunPrefix};

fn testbed() -> Command {
    Command::new(env!("CARGO_BIN_EXE_berth-testbed"))
}

/// berth-control, built beside berth-testbed by `cargo test --workspace`.
fn control_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_berth-testbed")).with_file_name("berth-control");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo xtask test` (or `cargo test --workspace`)",
        bin.display()
    );
    bin
}

#[test]
fn up_serves_kubectl_and_down_removes_everything() {
    require_root();
    let prefix = RunPrefix::random();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let up = testbed()
        .args([
            "up",
            "--name",
            prefix.as_str(),
            "--nodes",
            "2",
            "--listen",
            &listen,
            "--control-bin",
        ])
        .arg(control_bin())
        .output()
        .expect("run berth-testbed up");
    let down = || {
        testbed()
            .args(["down", "--name", prefix.as_str()])
            .output()
            .expect("run down")
    };
    let stdout = String::from_utf8_lossy(&up.stdout).into_owned();
    if !up.status.success() {
        down();
        panic!("up failed: {}", String::from_utf8_lossy(&up.stderr));
    }
    let kubeconfig = format!("/var/lib/berth/{prefix}/control/admin.kubeconfig");
    assert!(
        stdout.contains(&kubeconfig),
        "the kubeconfig path is printed:\n{stdout}"
    );

    let nodes = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "nodes,namespaces"])
        .output()
        .expect("kubectl");
    let listed = String::from_utf8_lossy(&nodes.stdout).into_owned();
    let second_up = testbed()
        .args([
            "up",
            "--name",
            prefix.as_str(),
            "--listen",
            &listen,
            "--control-bin",
        ])
        .arg(control_bin())
        .output()
        .expect("second up");
    let out = down();
    assert!(
        nodes.status.success(),
        "{}",
        String::from_utf8_lossy(&nodes.stderr)
    );
    assert!(listed.contains("namespace/default"), "{listed}");
    assert!(
        !second_up.status.success(),
        "a second up of the same cluster is refused"
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leftovers(&prefix).expect("leftovers"), Vec::<String>::new());
    assert!(!PathBuf::from(format!("/var/lib/berth/{prefix}")).exists());
    assert!(!PathBuf::from(format!("/run/berth/{prefix}")).exists());
    let gone = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .args(["get", "nodes", "--request-timeout=2s"])
        .output()
        .expect("kubectl");
    assert!(!gone.status.success(), "the control plane is stopped");
}
