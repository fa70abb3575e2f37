//! `cargo xtask deps`: install the Debian packages Berth needs.

use std::process::Command;

use anyhow::{bail, Context};

use crate::shell::run;

/// Packages, each with why it is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("clang-16", "compiles the C eBPF programs"),
    ("libelf-dev", "libbpf (built from source by libbpf-sys)"),
    ("zlib1g-dev", "libbpf"),
    ("pkg-config", "finds libelf and zlib for libbpf"),
    ("make", "libbpf-sys builds libbpf with make"),
    ("libseccomp-dev", "seccomp in the OCI runtime"),
    (
        "g++",
        "`cargo xtask fuzz`: bolero builds libFuzzer (C++) into the harnesses",
    ),
    (
        "bpftool",
        "vmlinux.h from the kernel's BTF at build time; inspecting pinned maps",
    ),
    ("busybox-static", "pod root filesystems and test clients"),
    ("iproute2", "the testbed's namespaces and links"),
    ("iptables", "kube-proxy-style yardstick rules in benchmarks"),
    ("nftables", "masquerading pod traffic"),
    ("etcd-server", "the distributed store's tests"),
    ("protobuf-compiler", "etcd's API, compiled by etcd-client"),
    (
        "libprotobuf-dev",
        "the well-known .proto files protoc imports (google/protobuf/descriptor.proto …)",
    ),
    ("iperf3", "overlay throughput benchmarks"),
    ("runc", "the yardstick of the runtime benchmark"),
    ("crun", "a second runtime yardstick (where it runs)"),
    (
        "containerd",
        "containerd-shim-runc-v2 calling berth-runtime as its runc in tests",
    ),
    (
        "debootstrap",
        "`cargo xtask fresh-check`: a bare Debian 12 to build in",
    ),
    (
        "containernetworking-plugins",
        "reference CNI plugins (bridge, host-local): the yardstick of berth-cni",
    ),
];

/// Installs whatever of [`PACKAGES`] is missing.
pub(crate) fn install() -> anyhow::Result<()> {
    let missing = missing()?;
    if missing.is_empty() {
        eprintln!("==> all {} packages are installed", PACKAGES.len());
        return Ok(());
    }
    eprintln!("==> missing packages:");
    for (name, why) in PACKAGES
        .iter()
        .filter(|(n, _)| missing.iter().any(|m| m == n))
    {
        eprintln!("    {name:<16} {why}");
    }
    if !is_root() {
        bail!(
            "missing packages ({}); run `cargo xtask deps` as root",
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    let still = missing_from(&missing)?;
    if !still.is_empty() {
        bail!("apt-get did not install: {}", still.join(" "));
    }
    Ok(())
}

fn missing() -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = PACKAGES.iter().map(|(name, _)| name.to_string()).collect();
    missing_from(&names)
}

/// Which of `names` dpkg does not report as installed.
fn missing_from(names: &[String]) -> anyhow::Result<Vec<String>> {
    let mut missing = Vec::new();
    for name in names {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${db:Status-Abbrev}", name])
            .output()
            .context("cannot run dpkg-query (is this a Debian machine?)")?;
        let status = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || !status.starts_with("ii") {
            missing.push(name.clone());
        }
    }
    Ok(missing)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
