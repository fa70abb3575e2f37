//! Namespaces, cgroup limits and the default confinement, seen from inside
//! containers run by `berth-runtime` (privileged: run as root).

mod common;

use common::Bed;

fn output(bed: &Bed, args: &[&str]) -> (Option<i32>, String, String) {
    let out = bed.run(args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn namespaces_hide_the_host() {
    let bed = Bed::new("ns");
    let bundle = bed.bundle(
        "b",
        &["sh", "-c", "hostname; echo $$; cat /proc/net/dev | tail -n +3 | cut -d: -f1; ls /proc | grep -c '^[0-9]'"],
        |doc| doc["hostname"] = "inside".into(),
    );
    let (code, out, err) = output(
        &bed,
        &["run", "--bundle", bundle.to_str().expect("path"), "n1"],
    );
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[0], "inside", "own UTS namespace: {out}");
    assert_eq!(lines[1], "1", "the program is pid 1: {out}");
    assert_eq!(lines[2..lines.len() - 1], ["lo"], "only loopback: {out}");
    let visible: usize = lines[lines.len() - 1].parse().expect("count");
    assert!(
        visible <= 4,
        "only the container's processes in /proc: {out}"
    );
    bed.finish();
}

#[test]
fn joining_another_containers_namespaces_by_path() {
    let bed = Bed::new("join");
    let first = bed.bundle("first", &["sleep", "1000"], |doc| {
        doc["hostname"] = "shared-uts".into()
    });
    bed.detached(&first, "j1");
    let pid = bed.state("j1")["pid"].as_i64().expect("pid");
    let second = bed.bundle("second", &["hostname"], |doc| {
        doc.as_object_mut().expect("object").remove("hostname");
        let namespaces = doc["linux"]["namespaces"]
            .as_array_mut()
            .expect("namespaces");
        for ns in namespaces.iter_mut() {
            if ns["type"] == "uts" {
                ns["path"] = format!("/proc/{pid}/ns/uts").into();
            }
        }
    });
    let (code, out, err) = output(
        &bed,
        &["run", "--bundle", second.to_str().expect("path"), "j2"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "shared-uts");
    bed.ok(&["delete", "--force", "j1"]);
    bed.finish();
}

#[test]
fn a_memory_limit_kills_an_over_allocating_process() {
    let bed = Bed::new("mem");
    // dd reads 256 MiB of zeros into one buffer: far over the 32 MiB limit.
    let bundle = bed.bundle(
        "b",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=256M count=1 && echo survived",
        ],
        |doc| doc["linux"]["resources"]["memory"] = serde_json::json!({"limit": 32 << 20}),
    );
    let (code, out, _) = output(
        &bed,
        &["run", "--bundle", bundle.to_str().expect("path"), "m1"],
    );
    assert!(!out.contains("survived"), "{out}");
    assert_eq!(
        code,
        Some(128 + 9),
        "the OOM killer's SIGKILL ends the container"
    );

    // The same program with room enough completes.
    let bundle = bed.bundle(
        "roomy",
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/null bs=8M count=1 2>/dev/null && echo survived",
        ],
        |doc| doc["linux"]["resources"]["memory"] = serde_json::json!({"limit": 64 << 20}),
    );
    let (code, out, err) = output(
        &bed,
        &["run", "--bundle", bundle.to_str().expect("path"), "m2"],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("survived"));
    bed.finish();
}

#[test]
fn a_pids_limit_stops_a_fork_bomb() {
    let bed = Bed::new("pids");
    let bundle = bed.bundle(
        "b",
        &["sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 1000"],
        |doc| doc["linux"]["resources"]["pids"] = serde_json::json!({"limit": 16}),
    );
    bed.detached(&bundle, "p1");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pids: Vec<i32> =
        serde_json::from_str(&bed.ok(&["ps", "--format", "json", "p1"])).expect("ps JSON");
    assert!(
        !pids.is_empty() && pids.len() <= 16,
        "{} processes",
        pids.len()
    );
    let current = common::cgroup_file(&bed, "p1", "pids", "pids.current", "pids.current");
    assert!(current.trim().parse::<u32>().expect("pids.current") <= 16);
    bed.ok(&["delete", "--force", "p1"]);
    bed.finish();
}

#[test]
fn cpu_limits_are_written_to_the_cgroup() {
    let bed = Bed::new("cpu");
    let bundle = bed.bundle("b", &["sleep", "1000"], |doc| {
        doc["linux"]["resources"]["cpu"] =
            serde_json::json!({"shares": 512, "quota": 50000, "period": 100000})
    });
    bed.detached(&bundle, "cpu1");
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu").exists();
    if v1 {
        let shares = common::cgroup_file(&bed, "cpu1", "cpu", "cpu.shares", "");
        assert_eq!(shares.trim(), "512");
        let quota = common::cgroup_file(&bed, "cpu1", "cpu", "cpu.cfs_quota_us", "");
        assert_eq!(quota.trim(), "50000");
    } else {
        let max = common::cgroup_file(&bed, "cpu1", "cpu", "", "cpu.max");
        assert_eq!(max.trim(), "50000 100000");
    }
    bed.ok(&["delete", "--force", "cpu1"]);
    bed.finish();
}

#[test]
fn the_default_profile_confines_the_container() {
    let bed = Bed::new("conf");
    // unshare needs no capability for a user namespace: only seccomp refuses it.
    let bundle = bed.bundle(
        "b",
        &["sh", "-c", "unshare -U true && echo unshared; mount -t tmpfs none /tmp && echo mounted; grep NoNewPrivs /proc/self/status; grep CapEff /proc/self/status"],
        |_| {},
    );
    let (_, out, err) = output(
        &bed,
        &["run", "--bundle", bundle.to_str().expect("path"), "s1"],
    );
    assert!(
        !out.contains("unshared"),
        "seccomp lets unshare through: {out}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    assert!(!out.contains("mounted"), "{out}");
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    let cap_eff = out
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:\t"))
        .map(|c| u64::from_str_radix(c.trim(), 16).expect("hex"))
        .expect("CapEff");
    assert!(cap_eff.count_ones() <= 14, "capabilities {cap_eff:x}");

    // Without the seccomp profile, the same unshare works.
    let bundle = bed.bundle(
        "open",
        &["sh", "-c", "unshare -U true && echo unshared"],
        |doc| {
            doc["linux"]
                .as_object_mut()
                .expect("linux")
                .remove("seccomp");
        },
    );
    let (_, out, err) = output(
        &bed,
        &["run", "--bundle", bundle.to_str().expect("path"), "s2"],
    );
    assert!(out.contains("unshared"), "{out} {err}");
    bed.finish();
}

/// A static program that tries to make each kind of namespace with `clone`
/// and one with `clone3`, printing `NAME ok` or `NAME errno=N` per try, and
/// a plain `clone` (a fork) as the control.
const CLONE_PROBE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long ret) {
    if (ret == 0) _exit(0);
    if (ret > 0) { waitpid(ret, 0, 0); printf("%s ok\n", name); }
    else printf("%s errno=%d\n", name, errno);
}

int main(void) {
    struct { const char *name; unsigned long flag; } kinds[] = {
        {"plain", 0}, {"newns", CLONE_NEWNS}, {"newcgroup", CLONE_NEWCGROUP},
        {"newuts", CLONE_NEWUTS}, {"newipc", CLONE_NEWIPC},
        {"newuser", CLONE_NEWUSER}, {"newpid", CLONE_NEWPID}, {"newnet", CLONE_NEWNET},
    };
    for (unsigned i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        report(kinds[i].name, syscall(SYS_clone, kinds[i].flag | SIGCHLD, 0, 0, 0, 0));
    struct { uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls; } args = {0};
    args.flags = CLONE_NEWUSER;
    args.exit_signal = SIGCHLD;
    report("clone3", syscall(SYS_clone3, &args, sizeof args));
    fflush(stdout);
    return 0;
}
"#;

/// Compiles [`CLONE_PROBE_C`] statically into `rootfs/clone-probe`.
fn build_clone_probe(bundle: &std::path::Path) {
    let source = bundle.join("clone-probe.c");
    std::fs::write(&source, CLONE_PROBE_C).expect("write probe source");
    let status = std::process::Command::new("cc")
        .args(["-static", "-O1", "-o"])
        .arg(bundle.join("rootfs/clone-probe"))
        .arg(&source)
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling the clone probe failed");
}

#[test]
fn the_default_profile_refuses_new_namespaces_through_clone_and_clone3() {
    let bed = Bed::new("clone");
    let bundle = bed.bundle("b", &["/clone-probe"], |_| {});
    build_clone_probe(&bundle);
    let (code, out, err) = output(
        &bed,
        &["run", "--bundle", bundle.to_str().expect("path"), "c1"],
    );
    assert_eq!(code, Some(0), "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"plain ok"), "{out}");
    for kind in [
        "newns",
        "newcgroup",
        "newuts",
        "newipc",
        "newuser",
        "newpid",
        "newnet",
    ] {
        let expected = format!("{kind} errno={}", libc::EPERM);
        assert!(lines.contains(&expected.as_str()), "{kind}: {out}");
    }
    let enosys = format!("clone3 errno={}", libc::ENOSYS);
    assert!(
        lines.contains(&enosys.as_str()),
        "clone3 is not ENOSYS: {out}"
    );

    // Without the profile a new user namespace is made: the probe can tell.
    let bundle = bed.bundle("open", &["/clone-probe"], |doc| {
        doc["linux"]
            .as_object_mut()
            .expect("linux")
            .remove("seccomp");
    });
    build_clone_probe(&bundle);
    let (_, out, err) = output(
        &bed,
        &["run", "--bundle", bundle.to_str().expect("path"), "c2"],
    );
    assert!(out.lines().any(|l| l == "newuser ok"), "{out} {err}");
    assert!(out.lines().any(|l| l == "clone3 ok"), "{out} {err}");
    bed.finish();
}

#[test]
fn disable_oom_killer_reaches_the_memory_cgroup() {
    if !std::path::Path::new("/sys/fs/cgroup/memory").is_dir() {
        // cgroup v2 has no such switch: create only warns.
        return;
    }
    let bed = Bed::new("oom");
    let bundle = bed.bundle("off", &["sleep", "1000"], |doc| {
        doc["linux"]["resources"]["memory"] =
            serde_json::json!({"limit": 64 << 20, "disableOOMKiller": true})
    });
    bed.detached(&bundle, "oom1");
    let control = common::cgroup_file(&bed, "oom1", "memory", "memory.oom_control", "");
    assert!(control.contains("oom_kill_disable 1"), "{control}");
    let limited = bed.bundle("on", &["sleep", "1000"], |doc| {
        doc["linux"]["resources"]["memory"] = serde_json::json!({"limit": 64 << 20})
    });
    bed.detached(&limited, "oom2");
    let control = common::cgroup_file(&bed, "oom2", "memory", "memory.oom_control", "");
    assert!(control.contains("oom_kill_disable 0"), "{control}");
    bed.ok(&["delete", "--force", "oom1"]);
    bed.ok(&["delete", "--force", "oom2"]);
    bed.finish();
}
