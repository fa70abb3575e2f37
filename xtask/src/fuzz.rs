//! `cargo xtask fuzz`: runs the fuzz harnesses of `fuzz/tests/` longer
//! than `cargo test` does (one second each, random inputs): coverage-guided
//! with libFuzzer by default, or with bolero's random engine.
//!
//! The coverage-guided build needs no nightly toolchain and no extra cargo
//! subcommand: the harnesses are built for the host triple with
//! SanitizerCoverage passes and `--cfg fuzzing_libfuzzer` (which links
//! bolero's libFuzzer), into `<target>/fuzz/` so the normal build is not
//! invalidated, and the test binary is then run with libFuzzer's options.
//! The corpus grows in `<target>/fuzz/corpus/<target>/`; a crashing input
//! is written to `fuzz/tests/__fuzz__/<target>/crashes/`, where `cargo
//! test` replays it from then on (commit it with the fix).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::shell::{cargo, run, target_dir, workspace_root};

/// Each harness and the test file it lives in.
const TARGETS: &[(&str, &str)] = &[
    ("api_body", "api"),
    ("patch", "api"),
    ("selector", "selector"),
    ("cni_config", "cni"),
    ("cni_env", "cni"),
    ("oci_config", "oci"),
];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub(crate) struct FuzzArgs {
    /// The harness to run (all of them when omitted).
    target: Option<String>,
    /// How long to run each harness.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Stop each coverage-guided run after this many executions (whichever
    /// of this and `--seconds` comes first).
    #[arg(long)]
    runs: Option<u64>,
    /// Use bolero's random engine instead of libFuzzer (no instrumented
    /// build; what `cargo test` runs, for longer).
    #[arg(long)]
    random: bool,
}

/// What one run reached.
struct Outcome {
    target: &'static str,
    executions: Option<u64>,
    seconds: f64,
    passed: bool,
}

/// Runs the selected harnesses, then prints what each reached.
pub(crate) fn fuzz(args: &FuzzArgs) -> anyhow::Result<()> {
    crate::deps::install()?;
    let selected: Vec<(&'static str, &'static str)> = match &args.target {
        None => TARGETS.to_vec(),
        Some(name) => match TARGETS.iter().find(|(t, _)| t == name) {
            Some(t) => vec![*t],
            None => bail!(
                "no fuzz target {name:?}; the targets are: {}",
                TARGETS
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    };
    let mut outcomes = Vec::new();
    if args.random {
        for (target, file) in selected {
            outcomes.push(random(target, file, args.seconds)?);
        }
    } else {
        let mut binaries = BTreeMap::new();
        for (target, file) in selected {
            if !binaries.contains_key(file) {
                binaries.insert(file, build_instrumented(file)?);
            }
            outcomes.push(libfuzzer(target, &binaries[file], args.seconds, args.runs)?);
        }
    }
    eprintln!(
        "\n{:<12} {:>14} {:>8} {:>10}  result",
        "target", "executions", "seconds", "exec/s"
    );
    for o in &outcomes {
        let executions = o.executions.map_or("-".to_owned(), |n| n.to_string());
        let rate = o.executions.map_or("-".to_owned(), |n| {
            format!("{:.0}", n as f64 / o.seconds.max(0.001))
        });
        let result = if o.passed { "ok" } else { "FAILED" };
        eprintln!(
            "{:<12} {executions:>14} {:>8.0} {rate:>10}  {result}",
            o.target, o.seconds
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.passed)
        .map(|o| o.target)
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (inputs under fuzz/tests/__fuzz__/<target>/crashes/)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The host's target triple: the instrumented build names it, so that
/// build scripts and proc macros (built for the host without a triple)
/// are not instrumented.
fn host_triple() -> anyhow::Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .arg("-vV")
        .output()
        .context("cannot run rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

/// Builds the test file `file` of berth-fuzz with coverage
/// instrumentation and libFuzzer; returns the test binary.
fn build_instrumented(file: &str) -> anyhow::Result<PathBuf> {
    let triple = host_triple()?;
    let flags = [
        "--cfg fuzzing",
        "--cfg fuzzing_libfuzzer",
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cdebug-assertions",
        "-Coverflow-checks",
    ]
    .join(" ");
    eprintln!("==> building the {file} harnesses with coverage instrumentation (first time: several minutes)");
    let mut cmd = cargo();
    cmd.args([
        "test",
        "--release",
        "--no-run",
        "-p",
        "berth-fuzz",
        "--test",
        file,
    ])
    .args([
        "--target",
        &triple,
        "--message-format=json-render-diagnostics",
    ])
    .env("CARGO_TARGET_DIR", target_dir().join("fuzz"))
    .env("RUSTFLAGS", flags)
    .stdout(Stdio::piped());
    let out = cmd
        .spawn()
        .context("cannot run cargo")?
        .wait_with_output()?;
    if !out.status.success() {
        bail!("building the {file} fuzz harnesses failed ({})", out.status);
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == file)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo built no test binary for {file}"))
}

/// Runs one harness under libFuzzer for `seconds`.
fn libfuzzer(
    target: &'static str,
    binary: &Path,
    seconds: u64,
    runs: Option<u64>,
) -> anyhow::Result<Outcome> {
    let corpus = target_dir().join("fuzz/corpus").join(target);
    let crashes = workspace_root()
        .join("fuzz/tests/__fuzz__")
        .join(target)
        .join("crashes");
    for dir in [&corpus, &crashes] {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // libFuzzer splits its options at spaces: the paths must have none.
    if corpus.to_string_lossy().contains(' ') || crashes.to_string_lossy().contains(' ') {
        bail!(
            "libFuzzer cannot take paths with spaces: {} / {}",
            corpus.display(),
            crashes.display()
        );
    }
    let runs = runs.map_or(String::new(), |n| format!("-runs={n} "));
    let options = format!(
        "{runs}-max_total_time={seconds} -print_final_stats=1 -timeout=10 -rss_limit_mb=4096 -max_len=4096 -artifact_prefix={}/ {}",
        crashes.display(),
        corpus.display()
    );
    eprintln!("==> fuzzing {target} for {seconds} s (libFuzzer)");
    let started = Instant::now();
    let mut child = Command::new(binary)
        .args([target, "--exact", "--nocapture", "--test-threads", "1"])
        .env("BOLERO_LIBFUZZER_ARGS", options)
        .current_dir(workspace_root().join("fuzz"))
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let mut executions = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                executions = n.trim().parse().ok();
            }
            // libFuzzer's own progress lines (`#N pulse/NEW/REDUCE …`).
            eprintln!("{line}");
        }
    }
    let status = child.wait()?;
    Ok(Outcome {
        target,
        executions,
        seconds: started.elapsed().as_secs_f64(),
        passed: status.success(),
    })
}

/// Runs one harness with bolero's random engine for `seconds`.
fn random(target: &'static str, file: &str, seconds: u64) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let passed = run(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "berth-fuzz",
            "--test",
            file,
            "--",
        ])
        .args([target, "--exact", "--nocapture"])
        .env("BOLERO_RANDOM_TEST_TIME_MS", (seconds * 1000).to_string()))
    .is_ok();
    Ok(Outcome {
        target,
        executions: None,
        seconds: started.elapsed().as_secs_f64(),
        passed,
    })
}
