//! Bad input gets a clear error and leaves nothing behind (privileged).

mod common;

use common::Bed;

#[test]
fn a_missing_bundle() {
    let bed = Bed::new("nobundle");
    let missing = bed.dir.join("nowhere");
    let err = bed.fails(&["create", "--bundle", missing.to_str().expect("path"), "x1"]);
    assert!(
        err.contains("nowhere") && err.contains("does not exist"),
        "{err}"
    );
    let empty = bed.dir.join("empty");
    std::fs::create_dir_all(&empty).expect("dir");
    let err = bed.fails(&["create", "--bundle", empty.to_str().expect("path"), "x1"]);
    assert!(err.contains("config.json"), "{err}");
    bed.finish();
}

#[test]
fn a_malformed_config() {
    let bed = Bed::new("badjson");
    let bundle = bed.bundle("b", &["true"], |_| {});
    std::fs::write(
        bundle.join("config.json"),
        "{\n  \"ociVersion\": \"1.0.2\",\n  \"process\": [\n",
    )
    .expect("write");
    let err = bed.fails(&["create", "--bundle", bundle.to_str().expect("path"), "x2"]);
    assert!(err.contains("config.json") && err.contains("line"), "{err}");

    // Valid JSON, but a root filesystem that is not there.
    let bundle = bed.bundle("noroot", &["true"], |doc| {
        doc["root"]["path"] = "missing-rootfs".into()
    });
    let err = bed.fails(&["create", "--bundle", bundle.to_str().expect("path"), "x3"]);
    assert!(err.contains("missing-rootfs"), "{err}");

    // A program that does not exist: libcontainer fails after it began.
    let bundle = bed.bundle("noprog", &["/no/such/program"], |_| {});
    let err = bed.fails(&["run", "--bundle", bundle.to_str().expect("path"), "x4"]);
    assert!(err.contains("/no/such/program"), "{err}");
    assert!(bed.fails(&["state", "x4"]).contains("does not exist"));
    bed.finish();
}

#[test]
fn an_unknown_container() {
    let bed = Bed::new("unknown");
    for verb in [
        &["start", "ghost"][..],
        &["state", "ghost"],
        &["kill", "ghost"],
        &["delete", "ghost"],
        &["pause", "ghost"],
        &["ps", "ghost"],
        &["exec", "ghost", "true"],
    ] {
        let err = bed.fails(verb);
        assert!(err.contains("\"ghost\" does not exist"), "{verb:?}: {err}");
    }
    // runc's --force deletes what exists and is quiet about what does not.
    bed.ok(&["delete", "--force", "ghost"]);
    let err = bed.fails(&["state", "../etc"]);
    assert!(err.contains("invalid container id"), "{err}");
    bed.finish();
}

#[test]
fn a_duplicate_id() {
    let bed = Bed::new("dup");
    let bundle = bed.bundle("b", &["sleep", "1000"], |_| {});
    bed.ok(&["create", "--bundle", bundle.to_str().expect("path"), "d1"]);
    let err = bed.fails(&["create", "--bundle", bundle.to_str().expect("path"), "d1"]);
    assert!(err.contains("\"d1\" already exists"), "{err}");
    // The first container is untouched.
    assert_eq!(bed.state("d1")["status"], "created");
    bed.ok(&["start", "d1"]);
    assert_eq!(bed.state("d1")["status"], "running");
    bed.ok(&["delete", "--force", "d1"]);
    bed.finish();
}

/// A change to a bundle's configuration.
type Edit = Box<dyn Fn(&mut serde_json::Value)>;

#[test]
fn configurations_runc_refuses_are_refused_before_anything_is_made() {
    let bed = Bed::new("badcfg");
    let bundle_path = |b: &std::path::Path| b.to_str().expect("path").to_owned();
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "uid",
            Box::new(|doc| doc["process"]["user"]["uid"] = 4_294_967_295u32.into()),
            "(uid_t)-1",
        ),
        (
            "gid",
            Box::new(|doc| doc["process"]["user"]["gid"] = 4_294_967_295u32.into()),
            "(uid_t)-1",
        ),
        (
            "cgroup",
            Box::new(|doc| doc["linux"]["cgroupsPath"] = "/berth/../../escape".into()),
            "linux.cgroupsPath",
        ),
        (
            "noargs",
            Box::new(|doc| doc["process"]["args"] = serde_json::json!([])),
            "`process.args` is empty",
        ),
        (
            "hugearg",
            Box::new(|doc| {
                doc["process"]["args"] = serde_json::json!(["echo", "x".repeat(200_000)])
            }),
            "`process.args[1]` is 200000 bytes",
        ),
        (
            "hugeargs",
            Box::new(|doc| {
                doc["process"]["args"] = (0..40).map(|_| "y".repeat(100_000)).collect();
            }),
            "the kernel takes at most",
        ),
        (
            "cwd",
            Box::new(|doc| doc["process"]["cwd"] = "relative/dir".into()),
            "`process.cwd` \"relative/dir\" must be an absolute path",
        ),
    ];
    for (name, edit, expected) in cases {
        let bundle = bed.bundle(name, &["true"], |doc| edit(doc));
        let err = bed.fails(&["create", "--bundle", &bundle_path(&bundle), name]);
        assert!(
            err.contains("invalid configuration") && err.contains(expected),
            "{name}: {err}"
        );
        assert!(bed.fails(&["state", name]).contains("does not exist"));
    }
    // Nothing was made outside the hierarchy by the `..` path.
    for hierarchy in common::cgroup_hierarchies() {
        assert!(
            !hierarchy
                .parent()
                .is_some_and(|p| p.join("escape").exists()),
            "a cgroup escaped next to {}",
            hierarchy.display()
        );
    }
    bed.finish();
}
