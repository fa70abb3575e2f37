//! The image store through `berth-runtime image …`: a layout packed from
//! busybox, imported, mounted as overlay root filesystems that containers
//! run on (privileged: run as root).

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use common::{busybox_rootfs, Bed};

/// A two-layer image: busybox, then a layer deleting `bin/ls`, replacing
/// `etc/` wholesale and adding `etc/motd`.
fn pack_test_image(bed: &Bed) -> PathBuf {
    let base = bed.dir.join("layer-base");
    busybox_rootfs(&base);
    std::fs::write(base.join("etc/old"), "from the base layer\n").expect("etc/old");
    let top = bed.dir.join("layer-top");
    std::fs::create_dir_all(top.join("bin")).expect("top/bin");
    std::fs::create_dir_all(top.join("etc")).expect("top/etc");
    std::fs::write(top.join("bin/.wh.ls"), "").expect("whiteout");
    std::fs::write(top.join("etc/.wh..wh..opq"), "").expect("opaque");
    std::fs::write(top.join("etc/motd"), "from the top layer\n").expect("motd");
    bed.pack("test:2", &[&base, &top])
}

fn store_args<'a>(store: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--images", store];
    all.extend_from_slice(args);
    all
}

#[test]
fn containers_run_on_overlay_root_filesystems_from_an_imported_image() {
    let bed = Bed::new("image");
    let layout = pack_test_image(&bed);
    let store = bed.dir.join("images");
    let s = store.to_str().expect("path");
    let imported = bed.ok(&store_args(
        s,
        &["image", "import", layout.to_str().expect("path")],
    ));
    assert_eq!(imported.trim(), "test:2");
    assert!(bed
        .ok(&store_args(s, &["image", "list"]))
        .starts_with("test:2\tsha256:"));

    // The layers are unpacked once, whiteouts as overlayfs expects them.
    let layers: Vec<PathBuf> = std::fs::read_dir(store.join("layers"))
        .expect("layers")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(layers.len(), 2, "{layers:?}");
    let whiteout = layers
        .iter()
        .map(|l| l.join("bin/ls"))
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device()))
        .expect("a 0:0 character device hides bin/ls");
    let inode = std::fs::metadata(whiteout.parent().expect("bin"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("ino");

    // Importing again reuses what is there.
    bed.ok(&store_args(
        s,
        &["image", "import", layout.to_str().expect("path")],
    ));
    let again = std::fs::metadata(whiteout.parent().expect("bin"))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .expect("ino");
    assert_eq!(inode, again, "a layer is unpacked once");

    let run_on = |id: &str, script: &str| -> String {
        let rootfs = bed.ok(&store_args(s, &["image", "mount", id, "test:2"]));
        let rootfs = Path::new(rootfs.trim()).to_owned();
        let bundle = bed.bundle(&format!("bundle-{id}"), &["sh", "-c", script], |doc| {
            doc["root"] =
                serde_json::json!({"path": rootfs.display().to_string(), "readonly": false});
        });
        let out = bed.run(&["run", "--bundle", bundle.to_str().expect("path"), id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = run_on(
        "img1",
        "ls /bin/busybox >/dev/null && echo has-busybox; test -e /bin/ls || echo no-ls; \
         test -e /etc/old || echo no-old; cat /etc/motd; echo written > /written",
    );
    assert_eq!(out, "has-busybox\nno-ls\nno-old\nfrom the top layer\n");
    // The write went to this container's upper directory only.
    assert!(store.join("rootfs/img1/upper/written").exists());
    assert!(layers.iter().all(|l| !l.join("written").exists()));
    let out = run_on("img2", "test -e /written && echo leaked || echo clean");
    assert_eq!(out, "clean\n", "containers share layers, not writes");

    for id in ["img1", "img2"] {
        bed.ok(&store_args(s, &["image", "unmount", id]));
        assert!(!store.join("rootfs").join(id).exists());
    }
    // Unmounting what is not there is fine (a retried cleanup).
    bed.ok(&store_args(s, &["image", "unmount", "img1"]));
    bed.finish();
}

#[test]
fn a_layer_with_a_bad_digest_is_refused_and_nothing_is_stored() {
    let bed = Bed::new("baddigest");
    let layout = pack_test_image(&bed);
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).expect("index"))
            .expect("JSON");
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("digest")
        .to_owned();
    let blob = |d: &str| {
        layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(blob(&manifest_digest)).expect("manifest"))
            .expect("JSON");
    let top = manifest["layers"][1]["digest"]
        .as_str()
        .expect("layer digest")
        .to_owned();
    let mut bytes = std::fs::read(blob(&top)).expect("layer");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(blob(&top), bytes).expect("corrupt the layer");

    let store = bed.dir.join("images");
    let s = store.to_str().expect("path");
    let err = bed.fails(&store_args(
        s,
        &["image", "import", layout.to_str().expect("path")],
    ));
    assert!(
        err.contains(top.trim_start_matches("sha256:")) && err.contains("digest"),
        "{err}"
    );
    for sub in ["blobs/sha256", "layers"] {
        let left: Vec<_> = std::fs::read_dir(store.join(sub)).expect("dir").collect();
        assert!(left.is_empty(), "{sub}: {left:?}");
    }
    assert!(!store.join("images.json").exists());
    assert!(bed
        .fails(&store_args(s, &["image", "mount", "x", "test:2"]))
        .contains("no image"));
    bed.finish();
}
