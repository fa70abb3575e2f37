//! `cargo xtask image`: an OCI image layout of a tiny busybox image, made
//! from Debian's busybox-static by `berth-runtime image pack`, so tests and
//! the local cluster need no registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::shell::{cargo, run, target_dir};

/// Where the image goes unless told otherwise (`<target dir>/images/busybox`).
pub(crate) fn default_out() -> PathBuf {
    target_dir().join("images/busybox")
}

/// Arguments of `cargo xtask image`.
#[derive(Debug, clap::Args)]
pub(crate) struct ImageArgs {
    /// The layout directory to write (default target/images/busybox).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The image's name in the layout.
    #[arg(long, default_value = "busybox:latest")]
    name: String,
}

/// Builds the runtime, lays out a busybox root filesystem and packs it.
pub(crate) fn build(args: &ImageArgs) -> anyhow::Result<()> {
    crate::deps::install()?;
    build_runtime()?;
    let out = args.out.clone().unwrap_or_else(default_out);
    let rootfs = target_dir().join("images/busybox-rootfs");
    if rootfs.exists() {
        std::fs::remove_dir_all(&rootfs)
            .with_context(|| format!("cannot remove {}", rootfs.display()))?;
    }
    busybox_rootfs(&rootfs)?;
    if out.exists() {
        std::fs::remove_dir_all(&out)
            .with_context(|| format!("cannot remove {}", out.display()))?;
    }
    run(Command::new(target_dir().join("release/berth-runtime"))
        .args(["image", "pack", "--name", &args.name, "--cmd", "sh"])
        .args(["--env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
        .arg("--out")
        .arg(&out)
        .arg(&rootfs))?;
    eprintln!("==> image {} in {}", args.name, out.display());
    Ok(())
}

/// Builds `target/release/berth-runtime`.
pub(crate) fn build_runtime() -> anyhow::Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "berth-runtime",
        "--bin",
        "berth-runtime",
    ]))
}

/// `bin/busybox` with a link per applet, and the usual empty directories.
fn busybox_rootfs(rootfs: &Path) -> anyhow::Result<()> {
    let bin = rootfs.join("bin");
    for dir in ["bin", "dev", "etc", "proc", "sys", "tmp", "root"] {
        std::fs::create_dir_all(rootfs.join(dir))
            .with_context(|| format!("cannot make {dir} in the rootfs"))?;
    }
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .context("cannot copy /bin/busybox (busybox-static)")?;
    let applets = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .context("cannot run busybox --list")?;
    for applet in String::from_utf8_lossy(&applets.stdout)
        .lines()
        .filter(|a| *a != "busybox")
    {
        std::os::unix::fs::symlink("busybox", bin.join(applet))
            .with_context(|| format!("cannot link the applet {applet}"))?;
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .context("cannot write etc/passwd")?;
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").context("cannot write etc/group")?;
    Ok(())
}
