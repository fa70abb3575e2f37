//! `cargo xtask test`: the one command that checks everything, as CI runs it.

use crate::shell::{cargo, run};

/// Installs what is missing, checks formatting and lints, and runs every
/// test of the workspace: unit tests, privileged tests and end-to-end
/// tests (the last two need root, and fail clearly without it).
pub(crate) fn all() -> anyhow::Result<()> {
    crate::deps::install()?;
    if crate::fresh::stale()? {
        eprintln!(
            "==> the lockfile, a manifest, a build script or the package list changed since the last fresh-check: running it"
        );
        crate::fresh::check()?;
    } else {
        eprintln!("==> fresh-check: build inputs unchanged since it last passed");
    }
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // End-to-end tests run every binary of the workspace: build them all,
    // also those of packages without integration tests of their own.
    run(cargo().args(["build", "--workspace", "--bins"]))?;
    run(cargo().args(["test", "--workspace"]))?;
    eprintln!("==> all checks and tests passed");
    Ok(())
}

/// Runs the control plane's soak test (ignored by `cargo test`) for
/// `seconds`.
pub(crate) fn soak(seconds: u64) -> anyhow::Result<()> {
    crate::deps::install()?;
    run(cargo()
        .args(["test", "-p", "berth-control", "--test", "soak", "--"])
        .args(["--ignored", "--nocapture"])
        .env("BERTH_SOAK_SECONDS", seconds.to_string()))
}
