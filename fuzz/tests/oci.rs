//! Fuzz harness for an OCI bundle's `config.json` as berth-runtime reads
//! it: decoding, then the checks made before anything is created.

use berth_fuzz::{Mutation, Vocabulary};
use berth_runtime::spec::{default_spec, parse_spec, validate};

const WORDS: Vocabulary = Vocabulary {
    keys: &[
        "ociVersion",
        "process",
        "terminal",
        "user",
        "uid",
        "gid",
        "additionalGids",
        "umask",
        "args",
        "env",
        "cwd",
        "capabilities",
        "bounding",
        "effective",
        "permitted",
        "rlimits",
        "type",
        "hard",
        "soft",
        "noNewPrivileges",
        "oomScoreAdj",
        "root",
        "path",
        "readonly",
        "hostname",
        "mounts",
        "destination",
        "source",
        "options",
        "hooks",
        "prestart",
        "createRuntime",
        "poststart",
        "poststop",
        "timeout",
        "linux",
        "namespaces",
        "uidMappings",
        "containerID",
        "hostID",
        "size",
        "cgroupsPath",
        "resources",
        "memory",
        "limit",
        "swap",
        "disableOOMKiller",
        "cpu",
        "shares",
        "quota",
        "period",
        "pids",
        "devices",
        "allow",
        "access",
        "major",
        "minor",
        "seccomp",
        "defaultAction",
        "architectures",
        "syscalls",
        "names",
        "action",
        "errnoRet",
        "args",
        "index",
        "value",
        "valueTwo",
        "op",
        "maskedPaths",
        "readonlyPaths",
        "sysctl",
        "annotations",
    ],
    strings: &[
        "",
        "/",
        "/bin/sh",
        "sh",
        "relative",
        "/tmp",
        "..",
        "../../etc",
        "/a/../..",
        "rootfs",
        "pid",
        "network",
        "mount",
        "ipc",
        "uts",
        "user",
        "cgroup",
        "time",
        "bind",
        "rbind",
        "ro",
        "proc",
        "tmpfs",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_KILL",
        "SCMP_CMP_MASKED_EQ",
        "SCMP_ARCH_X86_64",
        "clone",
        "clone3",
        "CAP_SYS_ADMIN",
        "CAP_NET_ADMIN",
        "RLIMIT_NOFILE",
        "PATH=/bin",
        "=",
        "c",
        "b",
        "rwm",
        "1.0.2",
        "2.0.0",
        "net.ipv4.ip_forward",
    ],
};

/// Any configuration: never a panic, and one that passes the checks has
/// what `create` relies on.
#[test]
fn oci_config() {
    let base = serde_json::to_value(default_spec().expect("the default spec")).expect("encodes");
    bolero::check!()
        .with_type::<Mutation>()
        .for_each(|mutation| {
            let (_, bytes) = mutation.apply(&base, &WORDS);
            let Ok(spec) = parse_spec(&bytes, "config.json") else {
                return;
            };
            if validate(&spec).is_err() {
                return;
            }
            let process = spec.process().as_ref().expect("checked: has a process");
            assert!(!process.args().as_deref().unwrap_or_default().is_empty());
            assert!(process.cwd().is_absolute());
            assert_ne!(process.user().uid(), u32::MAX);
            assert_ne!(process.user().gid(), u32::MAX);
        });
}
