//! Finding and removing what a run left behind, by its prefix.

use std::fs;
use std::path::Path;

use crate::cgroup::{self, CGROUP2_ROOT};
use crate::cmd::ip;
use crate::netns::{self, NETNS_DIR};
use crate::{pin_dir, Error, RunPrefix};

/// Everything on the machine named with `prefix`: network namespaces,
/// links in the root namespace, cgroups, bpffs pins, and processes of the
/// run (agents and servers whose command line names a namespace, cgroup
/// or pin of the run). Empty after a clean run.
pub fn leftovers(prefix: &RunPrefix) -> Result<Vec<String>, Error> {
    let mut found: Vec<String> = processes(prefix)
        .into_iter()
        .map(|(pid, cmd)| format!("process {pid} {cmd}"))
        .collect();
    found.extend(
        namespaces(prefix)?
            .into_iter()
            .map(|n| format!("netns {n}")),
    );
    let links = ip(&["-o", "link", "show"])?;
    found.extend(
        links
            .lines()
            .filter(|l| l.contains(prefix.as_str()))
            .map(|l| format!("root-namespace link {}", l.trim())),
    );
    for root in [CGROUP2_ROOT, berth_ebpf::bpffs::DEFAULT_ROOT] {
        let path = Path::new(root).join(prefix.as_str());
        if path.exists() {
            found.push(path.display().to_string());
        }
    }
    Ok(found)
}

/// Removes everything named with `prefix`, as a killed run may leave it:
/// its processes first (SIGKILL), then namespaces, cgroups and pins.
pub fn sweep(prefix: &RunPrefix) -> Result<(), Error> {
    for (pid, _) in processes(prefix) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for name in namespaces(prefix)? {
        netns::delete(&name)?;
    }
    cgroup::remove_tree(&Path::new(CGROUP2_ROOT).join(prefix.as_str()))?;
    pin_dir::remove(&Path::new(berth_ebpf::bpffs::DEFAULT_ROOT).join(prefix.as_str()))
}

/// Processes whose command line names one of the run's paths
/// (`/run/netns/<prefix>-…`, `/sys/fs/…/<prefix>/…`, `/tmp/<prefix>-…`).
fn processes(prefix: &RunPrefix) -> Vec<(i32, String)> {
    let marks = [
        format!("/run/netns/{prefix}-"),
        format!("/{prefix}/"),
        format!("/{prefix}-"),
    ];
    let own = std::process::id();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| u32::try_from(*pid).is_ok_and(|p| p != own))
        .filter_map(|pid| {
            let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
            marks
                .iter()
                .any(|m| cmd.contains(m.as_str()))
                .then(|| (pid, cmd.trim().to_string()))
        })
        .collect()
}

/// Named network namespaces of the run (`<prefix>-…`).
fn namespaces(prefix: &RunPrefix) -> Result<Vec<String>, Error> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", NETNS_DIR, e)),
    };
    let start = format!("{prefix}-");
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&start))
        .collect())
}
