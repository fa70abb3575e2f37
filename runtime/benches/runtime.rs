//! `cargo xtask bench runtime`: create + start + delete of a busybox `true`
//! container, berth-runtime against Debian's runc and crun run side by
//! side (interleaved) in the same run on the same bundle. Prints medians,
//! p90s and ratios; asserts nothing. A runtime that refuses this machine
//! (crun on hybrid cgroups) is reported with its error. Needs root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use berth_runtime::spec::default_spec;

const ROUNDS: usize = 60;
const WARMUP: usize = 5;

struct Contender {
    name: &'static str,
    binary: PathBuf,
    root: PathBuf,
    samples: Vec<Duration>,
}

fn main() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the runtime benchmark creates containers: run it as root"
    );
    let prefix = format!("berth-bench-rt-{}", std::process::id());
    let dir = std::env::temp_dir().join(&prefix);
    let bundle = dir.join("bundle");
    make_bundle(&bundle, &prefix);
    // Beside this benchmark's executable (`<target>/release/deps/`), in
    // whichever target directory the build used.
    let berth = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(2).map(|d| d.join("berth-runtime")))
        .unwrap_or_default();
    assert!(
        berth.exists(),
        "build it first: cargo build --release -p berth-runtime"
    );
    let mut contenders = Vec::new();
    for (name, binary) in [
        ("berth-runtime", berth),
        ("runc", "/usr/sbin/runc".into()),
        ("crun", "/usr/bin/crun".into()),
    ] {
        let contender = Contender {
            name,
            root: dir.join(format!("root-{name}")),
            binary,
            samples: Vec::new(),
        };
        match cycle(&contender, &bundle, "probe") {
            Ok(_) => contenders.push(contender),
            Err(why) => println!("{name}: does not run here: {why}"),
        }
    }
    println!("create + start + delete of busybox `true`, {ROUNDS} rounds (interleaved) after {WARMUP} warm-up rounds");
    for round in 0..WARMUP + ROUNDS {
        for contender in contenders.iter_mut() {
            let id = format!("c{round}");
            match cycle(contender, &bundle, &id) {
                Ok(took) if round >= WARMUP => contender.samples.push(took),
                Ok(_) => {}
                Err(why) => panic!("{} failed in round {round}: {why}", contender.name),
            }
        }
    }
    println!("{:<14} {:>10} {:>10}", "runtime", "median ms", "p90 ms");
    let mut medians = Vec::new();
    for contender in contenders.iter_mut() {
        contender.samples.sort();
        let median = contender.samples[contender.samples.len() / 2];
        let p90 = contender.samples[contender.samples.len() * 9 / 10];
        println!(
            "{:<14} {:>10.2} {:>10.2}",
            contender.name,
            ms(median),
            ms(p90)
        );
        medians.push((contender.name, median));
    }
    let berth = medians
        .iter()
        .find(|(n, _)| *n == "berth-runtime")
        .map(|(_, m)| *m);
    if let Some(berth) = berth {
        for (name, median) in medians.iter().filter(|(n, _)| *n != "berth-runtime") {
            let ratio = ms(berth) / ms(*median);
            let goal = if *name == "runc" { 0.5 } else { 1.0 };
            let verdict = if ratio <= goal { "met" } else { "missed" };
            println!("berth-runtime / {name}: {ratio:.2} (goal <= {goal:.2}: {verdict})");
        }
    }
    cleanup(&dir, &prefix);
}

/// One create + start + delete; the time it took, or the runtime's error.
fn cycle(contender: &Contender, bundle: &Path, id: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let bundle = bundle.display().to_string();
    call(contender, &["create", "--bundle", &bundle, id])?;
    let result =
        call(contender, &["start", id]).and_then(|()| call(contender, &["delete", "--force", id]));
    let took = started.elapsed();
    if result.is_err() {
        let _ = call(contender, &["delete", "--force", id]);
    }
    result.map(|()| took)
}

fn call(contender: &Contender, args: &[&str]) -> Result<(), String> {
    let err = contender.root.with_extension("err");
    std::fs::create_dir_all(&contender.root).map_err(|e| e.to_string())?;
    let status = Command::new(&contender.binary)
        .arg("--root")
        .arg(&contender.root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // A file, not a pipe: the container inherits it.
        .stderr(std::fs::File::create(&err).map_err(|e| e.to_string())?)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", contender.binary.display()))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&err).unwrap_or_default();
    Err(text.lines().last().unwrap_or("failed").trim().to_owned())
}

/// A busybox bundle running `true` with the default configuration and a
/// cgroup under the run's prefix, the same for every runtime.
fn make_bundle(bundle: &Path, prefix: &str) {
    let rootfs = bundle.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("rootfs");
    for dir in ["proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(rootfs.join(dir)).expect("rootfs dir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("busybox-static");
    std::os::unix::fs::symlink("busybox", bin.join("true")).expect("link");
    let spec = default_spec().expect("default spec");
    let mut doc = serde_json::to_value(&spec).expect("JSON");
    doc["process"]["args"] = serde_json::json!(["true"]);
    doc["linux"]["cgroupsPath"] = serde_json::json!(format!("/{prefix}/bench"));
    std::fs::write(bundle.join("config.json"), doc.to_string()).expect("config.json");
}

fn cleanup(dir: &Path, prefix: &str) {
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let parent = e.path().join(prefix);
            let _ = std::fs::remove_dir(parent.join("bench"));
            let _ = std::fs::remove_dir(&parent);
        }
    }
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(prefix));
    let _ = std::fs::remove_dir_all(dir);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
