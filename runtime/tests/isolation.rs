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
