//! Finding and removing what a run left behind, by its prefix.

use std::fs;
use std::path::Path;

use crate::cgroup::{self, CGROUP2_ROOT};
use crate::cmd::ip;
use crate::netns::{self, NETNS_DIR};
use crate::{pin_dir, Error, RunPrefix};

/// Everything on the machine named with `prefix`: network namespaces,
/// links in the root namespace, cgroups and bpffs pins. Empty after a clean
/// run.
pub fn leftovers(prefix: &RunPrefix) -> Result<Vec<String>, Error> {
    let mut found: Vec<String> = namespaces(prefix)?
        .into_iter()
        .map(|n| format!("netns {n}"))
        .collect();
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

/// Removes everything named with `prefix`, as a killed run may leave it.
pub fn sweep(prefix: &RunPrefix) -> Result<(), Error> {
    for name in namespaces(prefix)? {
        netns::delete(&name)?;
    }
    cgroup::remove_tree(&Path::new(CGROUP2_ROOT).join(prefix.as_str()))?;
    pin_dir::remove(&Path::new(berth_ebpf::bpffs::DEFAULT_ROOT).join(prefix.as_str()))
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
