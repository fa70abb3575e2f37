//! `cargo xtask test`: the one command that checks everything, as CI runs it.

use crate::shell::{cargo, run};

/// Installs what is missing, checks formatting and lints, and runs every
/// test of the workspace: unit tests, privileged tests and end-to-end
/// tests (the last two need root, and fail clearly without it).
pub(crate) fn all() -> anyhow::Result<()> {
    crate::deps::install()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo().args(["test", "--workspace"]))?;
    eprintln!("==> all checks and tests passed");
    Ok(())
}
