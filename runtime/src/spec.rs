//! Container configurations: the default one `berth-runtime spec` writes,
//! what `create` adds to a bundle's configuration, and the runtime's
//! feature list.

use std::path::{Path, PathBuf};

use libcontainer::oci_spec::runtime::{LinuxSeccomp, Mount, Spec};
use serde_json::json;

use crate::error::{Error, Result};

/// System calls the default seccomp profile refuses with EPERM: those that
/// reach beyond a container (kernel modules, reboot, clocks, swap, kernel
/// keyrings, BPF, tracing other processes, new namespaces and mounts).
/// Everything else is allowed, and the capability set stays minimal.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// The configuration `berth-runtime spec` writes: runc's defaults (the
/// minimal capability set, no new privileges, masked and read-only paths,
/// new pid, network, ipc, uts and mount namespaces) plus the default seccomp
/// profile and a rootfs directory `rootfs` next to `config.json`.
pub fn default_spec() -> Result<Spec> {
    let mut spec = Spec::default();
    spec.set_version("1.0.2".to_owned());
    spec.set_hostname(Some("berth".to_owned()));
    if let Some(linux) = spec.linux_mut() {
        linux.set_seccomp(Some(default_seccomp()?));
    }
    Ok(spec)
}

/// The `clone` flags that make new namespaces, each refused by the
/// default profile (as `unshare` and `setns` are): a new user namespace
/// would give the container a full capability set inside it, and with it
/// network administration and nf_tables in a namespace of its own.
const NAMESPACE_CLONE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The default seccomp profile: allow, except [`DENIED_SYSCALLS`] (EPERM),
/// `clone` with any of [`NAMESPACE_CLONE_FLAGS`] (EPERM), and `clone3`,
/// whose flags sit in memory seccomp cannot read (ENOSYS, so that libc falls
/// back to `clone`), as Docker's and containerd's default profiles do.
pub fn default_seccomp() -> Result<LinuxSeccomp> {
    let mut rules = vec![
        json!({
            "names": DENIED_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }),
        json!({
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS,
        }),
    ];
    // The flags are clone's first argument on the x86 architectures; one
    // rule per flag, since a rule's conditions must all hold.
    rules.extend(NAMESPACE_CLONE_FLAGS.iter().map(|flag| {
        json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        })
    }));
    let profile = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    });
    serde_json::from_value(profile).map_err(|source| Error::Json {
        what: "the default seccomp profile".to_owned(),
        source,
    })
}

/// Reads and parses `<bundle>/config.json`, with the error naming the file
/// and, for malformed JSON, the line and column.
pub fn load_bundle_spec(bundle: &Path) -> Result<Spec> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(Error::io(&path))?;
    parse_spec(&text, &path.display().to_string())
}

/// Parses a configuration read from `what` (named in the error).
pub fn parse_spec(text: &[u8], what: &str) -> Result<Spec> {
    serde_json::from_slice(text).map_err(|source| Error::Json {
        what: what.to_owned(),
        source,
    })
}

/// What `create` changes in a bundle's configuration before handing it to
/// libcontainer: the root and relative bind-mount sources become absolute
/// (the configuration is read from the runtime's state directory, not the
/// bundle), and a missing `cgroupsPath` becomes `<cgroup_parent>/<id>`,
/// never libcontainer's `:youki:<id>` at the root of every hierarchy.
pub(crate) fn prepare(
    spec: &mut Spec,
    bundle: &Path,
    cgroup_parent: &Path,
    id: &str,
) -> Result<()> {
    validate(spec)?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or(Error::Unsupported("a configuration without `root`"))?;
    let root_path = absolute(bundle, &root);
    if !root_path.is_dir() {
        return Err(Error::Io {
            path: root_path,
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the container's root filesystem is not a directory",
            ),
        });
    }
    if let Some(r) = spec.root_mut() {
        r.set_path(root_path);
    }
    if let Some(mounts) = spec.mounts_mut() {
        for mount in mounts.iter_mut() {
            absolute_bind_source(mount, bundle);
        }
    }
    let linux = spec
        .linux_mut()
        .as_mut()
        .ok_or(Error::Unsupported("a configuration without `linux`"))?;
    if linux.cgroups_path().is_none() {
        let parent = Path::new("/").join(cgroup_parent);
        linux.set_cgroups_path(Some(parent.join(id)));
    }
    Ok(())
}

/// The kernel's limit on one argument or environment string
/// (`MAX_ARG_STRLEN`).
const MAX_ARG_BYTES: usize = 32 * 4096;

/// The id `(uid_t)-1`, which `setuid` and friends read as "leave unchanged".
const NO_ID: u32 = u32::MAX;

/// Checks what libcontainer would otherwise trip over halfway through, or
/// accept wrongly, so `create` refuses before it touches anything: a
/// process with no or oversized arguments, a relative working directory,
/// a user or group id of `(uid_t)-1`, and a cgroups path leaving its
/// hierarchy.
pub fn validate(spec: &Spec) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidConfig(m));
    let Some(process) = spec.process() else {
        return invalid("`process` is missing".to_owned());
    };
    let args = process.args().as_deref().unwrap_or_default();
    if args.is_empty() {
        return invalid("`process.args` is empty: name the program to run".to_owned());
    }
    let env = process.env().as_deref().unwrap_or_default();
    for (what, strings) in [("process.args", args), ("process.env", env)] {
        if let Some((i, s)) = strings
            .iter()
            .enumerate()
            .find(|(_, s)| s.len() >= MAX_ARG_BYTES)
        {
            return invalid(format!(
                "`{what}[{i}]` is {} bytes; the kernel takes at most {} per string",
                s.len(),
                MAX_ARG_BYTES - 1
            ));
        }
    }
    // What execve copies: every string with its NUL and a pointer to it.
    let total: usize = args
        .iter()
        .chain(env)
        .map(|s| s.len() + 1 + std::mem::size_of::<usize>())
        .sum();
    let arg_max = arg_max();
    if total > arg_max {
        return invalid(format!(
            "`process.args` and `process.env` take {total} bytes; the kernel takes at most {arg_max}"
        ));
    }
    if !process.cwd().is_absolute() {
        return invalid(format!(
            "`process.cwd` {:?} must be an absolute path",
            process.cwd()
        ));
    }
    let user = process.user();
    if user.uid() == NO_ID || user.gid() == NO_ID {
        return invalid(format!(
            "`process.user` uid {} gid {}: {NO_ID} is (uid_t)-1, not a user or group",
            user.uid(),
            user.gid()
        ));
    }
    if user
        .additional_gids()
        .as_ref()
        .is_some_and(|g| g.contains(&NO_ID))
    {
        return invalid(format!(
            "`process.user.additionalGids` holds {NO_ID}, which is (gid_t)-1"
        ));
    }
    if let Some(path) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
    {
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return invalid(format!(
                "`linux.cgroupsPath` {path:?} must not contain `..`: it would leave the cgroup hierarchy"
            ));
        }
    }
    Ok(())
}

/// The kernel's limit on arguments and environment together (`ARG_MAX`).
fn arg_max() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::ARG_MAX)
        .ok()
        .flatten()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(128 * 1024)
}

fn absolute(bundle: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        bundle.join(path)
    }
}

fn absolute_bind_source(mount: &mut Mount, bundle: &Path) {
    let is_bind = mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"));
    if let (true, Some(source)) = (is_bind, mount.source().clone()) {
        if source.is_relative() {
            mount.set_source(Some(bundle.join(source)));
        }
    }
}

/// What `berth-runtime features` prints (runtime-spec `features.json`).
pub fn features() -> serde_json::Value {
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.0",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": [
            "async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec",
            "iversion", "lazytime", "loud", "mand", "noatime", "nodev", "nodiratime",
            "noexec", "noiversion", "nolazytime", "nomand", "norelatime", "nostrictatime",
            "nosuid", "nosymfollow", "private", "rbind", "relatime", "remount", "ro", "rprivate",
            "rshared", "rslave", "runbindable", "rw", "shared", "slave", "strictatime",
            "suid", "symfollow", "sync", "unbindable"
        ],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": capability_names(),
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": [
                    "SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP"
                ],
                "operators": [
                    "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"
                ],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"]
            },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false }
        },
        "annotations": {
            "org.opencontainers.runtime-spec.features.runtime": "berth-runtime",
            "dev.berth.runtime.version": env!("CARGO_PKG_VERSION"),
            "dev.berth.runtime.libcontainer.version": "0.7"
        }
    })
}

/// Every capability this kernel knows, as `CAP_…` names, sorted.
fn capability_names() -> Vec<String> {
    let mut names: Vec<String> = caps::all().iter().map(|c| c.to_string()).collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_is_minimal_and_confined() {
        let spec = default_spec().expect("default spec");
        let process = spec.process().as_ref().expect("process");
        assert_eq!(process.no_new_privileges(), Some(true));
        let caps = process.capabilities().as_ref().expect("capabilities");
        let bounding = caps.bounding().as_ref().expect("bounding set");
        assert!(
            bounding.len() <= 14,
            "capability set is not minimal: {bounding:?}"
        );
        let linux = spec.linux().as_ref().expect("linux");
        assert!(linux
            .masked_paths()
            .as_ref()
            .is_some_and(|p| p.iter().any(|p| p == "/proc/kcore")));
        assert!(linux
            .readonly_paths()
            .as_ref()
            .is_some_and(|p| p.iter().any(|p| p == "/proc/sys")));
        let seccomp = linux.seccomp().as_ref().expect("seccomp");
        let denied = seccomp.syscalls().as_ref().expect("rules")[0]
            .names()
            .clone();
        assert!(denied.iter().any(|n| n == "kexec_load"));
    }

    #[test]
    fn prepare_makes_paths_absolute_and_sets_cgroups_path() {
        let dir = std::env::temp_dir().join(format!("berth-spec-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).expect("mkdir");
        let mut spec = default_spec().expect("default spec");
        prepare(&mut spec, &dir, Path::new("berth"), "c1").expect("prepare");
        assert_eq!(
            spec.root().as_ref().map(|r| r.path().clone()),
            Some(dir.join("rootfs"))
        );
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.cgroups_path().clone(),
            Some(PathBuf::from("/berth/c1"))
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn prepare_keeps_a_given_cgroups_path_and_refuses_a_missing_rootfs() {
        let dir = std::env::temp_dir().join(format!("berth-spec2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut spec = default_spec().expect("default spec");
        let err = prepare(&mut spec, &dir, Path::new("berth"), "c1").expect_err("no rootfs");
        assert!(err.to_string().contains("rootfs"), "{err}");
        std::fs::create_dir_all(dir.join("rootfs")).expect("mkdir");
        if let Some(linux) = spec.linux_mut() {
            linux.set_cgroups_path(Some(PathBuf::from("/mine/x")));
        }
        prepare(&mut spec, &dir, Path::new("berth"), "c1").expect("prepare");
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(linux.cgroups_path().clone(), Some(PathBuf::from("/mine/x")));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
