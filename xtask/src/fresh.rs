//! `cargo xtask fresh-check`: builds the workspace on a bare Debian 12 that
//! has only what `cargo xtask deps` installs, so a missing install step
//! fails here rather than on a user's machine.
//!
//! The bare machine is a `debootstrap --variant=minbase` root under
//! `target/fresh-check/`, given the host's Rust toolchain (read-only) and
//! [`BASELINE`], the little a machine that runs a Rust toolchain has. In a
//! private mount namespace (so no mount outlives the check, even if it is
//! killed) it runs `cargo xtask deps`, then builds every target of the
//! workspace. A successful check records a fingerprint of what decides the
//! build's system needs (the lockfile, every build script, the package
//! list) in [`SUM_FILE`]; `cargo xtask test` runs the check again
//! whenever that fingerprint no longer matches.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::shell::{run, target_dir, workspace_root};

/// The Debian release users start from.
const SUITE: &str = "bookworm";

/// What a bare Debian 12 with a Rust toolchain has beyond `minbase`: the C
/// compiler and libc headers rustc links with, and the CA certificates
/// cargo needs to reach the crate registry.
const BASELINE: &[&str] = &["ca-certificates", "gcc", "libc6-dev"];

/// The fingerprint of the last passing check, relative to the workspace.
const SUM_FILE: &str = "xtask/fresh-check.sum";

/// Runs the check; on success records the fingerprint.
pub(crate) fn check() -> anyhow::Result<()> {
    crate::deps::install()?;
    let work = target_dir().join("fresh-check");
    let root = work.join("root");
    remove_root(&root)?;
    std::fs::create_dir_all(work.join("debs"))?;
    let mirror = host_mirror()?;
    eprintln!("==> fresh-check: a bare Debian 12 in {}", root.display());
    run(Command::new("debootstrap")
        .args(["--variant=minbase", "--cache-dir"])
        .arg(work.join("debs"))
        .arg(SUITE)
        .arg(&root)
        .arg(&mirror))?;
    // The fingerprint of the sources as they are copied, not as they may
    // be edited while the build runs.
    let sum = fingerprint()?;
    let result = build_in(&root);
    remove_root(&root)?;
    result?;
    std::fs::write(workspace_root().join(SUM_FILE), format!("{sum}\n"))?;
    eprintln!("==> fresh-check passed; fingerprint {sum} written to {SUM_FILE} (commit it)");
    Ok(())
}

/// Whether the build's inputs changed since the last passing check.
pub(crate) fn stale() -> anyhow::Result<bool> {
    let recorded = std::fs::read_to_string(workspace_root().join(SUM_FILE)).unwrap_or_default();
    Ok(recorded.trim() != fingerprint()?)
}

/// Sets the root up as a fresh machine and builds the workspace in it.
fn build_in(root: &Path) -> anyhow::Result<()> {
    // The same package sources as the host (a user's machine has its
    // distribution's), and its resolver.
    let apt = root.join("etc/apt");
    std::fs::remove_file(apt.join("sources.list")).ok();
    for path in apt_source_files()? {
        let to = apt
            .join("sources.list.d")
            .join(path.file_name().unwrap_or_default());
        std::fs::copy(&path, &to).with_context(|| format!("copying {}", path.display()))?;
    }
    if Path::new("/etc/apt/sources.list").exists() {
        std::fs::copy("/etc/apt/sources.list", apt.join("sources.list"))?;
    }
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))?;
    // Packages install without starting their services (etcd, containerd):
    // the chroot shares the host's network.
    let policy = root.join("usr/sbin/policy-rc.d");
    std::fs::write(&policy, "#!/bin/sh\nexit 101\n")?;
    std::fs::set_permissions(&policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;

    copy_sources(&root.join("src"))?;
    let sysroot = rust_sysroot()?;
    let script = format!(
        r#"set -eu
root={root}
mount -t proc proc "$root/proc"
mount -t sysfs -o ro sysfs "$root/sys"
mount --bind /dev "$root/dev"
mkdir -p "$root/src" "$root{sysroot}"
mount --bind {sysroot} "$root{sysroot}"
mount -o remount,bind,ro "$root{sysroot}"
echo "==> fresh-check: baseline packages: {baseline}"
chroot "$root" apt-get update -q
chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {baseline}
# The host's trust store: the crate registry is reached through whatever
# the host's network requires (a user's machine trusts what its network needs).
mount --bind -o ro /etc/ssl/certs "$root/etc/ssl/certs"
echo "==> fresh-check: cargo xtask deps, then cargo build --keep-going --workspace --all-targets"
chroot "$root" env -i HOME=/root PATH={sysroot}/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CARGO_HOME=/build/cargo CARGO_TARGET_DIR=/build/target \
    sh -euc 'cd /src && cargo xtask deps && cargo build --locked --keep-going --workspace --all-targets'
"#,
        root = quote(root),
        sysroot = sysroot.display(),
        baseline = BASELINE.join(" "),
    );
    run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script))
    .context("the build on a bare Debian 12 failed (see above); if a system library or tool was missing, `cargo xtask deps` must install it")
}

/// Copies the workspace as it is now (without build output and version
/// control) to `to`, so edits made while the check runs do not reach it.
fn copy_sources(to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    let src = workspace_root();
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(&src)? {
        let name = entry?.file_name();
        if name != "target" && name != ".git" {
            entries.push(name);
        }
    }
    run(Command::new("cp")
        .arg("-a")
        .args(entries.iter().map(|n| src.join(n)))
        .arg(to))
}

/// Removes a root left by this or an earlier check, refusing if anything
/// is still mounted beneath it (the mounts live in a private namespace, so
/// none should be).
fn remove_root(root: &Path) -> anyhow::Result<()> {
    if !root.exists() {
        return Ok(());
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let prefix = root.display().to_string();
    if let Some(line) = mounts
        .lines()
        .find(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
    {
        bail!(
            "{} still has a mount ({line}); unmount it before removing the root",
            root.display()
        );
    }
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))
}

/// The host's Debian mirror for [`SUITE`], from its apt sources (deb822
/// `.sources` files or one-line `sources.list` entries).
fn host_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    for path in apt_source_files()? {
        texts.push(std::fs::read_to_string(&path)?);
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    texts
        .iter()
        .find_map(|t| mirror_in(t))
        .with_context(|| format!("no apt source for Debian {SUITE} in /etc/apt"))
}

/// The host's apt source files in `/etc/apt/sources.list.d` (deb822
/// `.sources` and one-line `.list`).
fn apt_source_files() -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir("/etc/apt/sources.list.d")? {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|e| e == "sources" || e == "list")
        {
            files.push(path);
        }
    }
    Ok(files)
}

/// The first URI serving [`SUITE`] (not a security or updates suite).
fn mirror_in(text: &str) -> Option<String> {
    // deb822 stanzas.
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(str::trim))
        };
        let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
            continue;
        };
        if suites.split_whitespace().any(|s| s == SUITE) {
            return uris.split_whitespace().next().map(str::to_string);
        }
    }
    // One-line format: deb [options] URI SUITE COMPONENTS...
    text.lines().find_map(|line| {
        let words: Vec<&str> = line
            .split_whitespace()
            .filter(|w| !w.starts_with('['))
            .collect();
        match words.as_slice() {
            ["deb", uri, suite, ..] if *suite == SUITE => Some((*uri).to_string()),
            _ => None,
        }
    })
}

/// The sysroot of the toolchain running this task.
fn rust_sysroot() -> anyhow::Result<PathBuf> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc")?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// A hash over what decides which system packages the build needs: the
/// lockfile (every crate, so every `-sys` crate and build script of a
/// dependency), the workspace's own build scripts, and the package list of
/// `cargo xtask deps`.
fn fingerprint() -> anyhow::Result<String> {
    let root = workspace_root();
    let mut files = vec![root.join("Cargo.lock"), root.join("xtask/src/deps.rs")];
    inputs_under(&root, &mut files)?;
    files.sort();
    let mut listing = String::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap_or(file);
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        writeln!(listing, "{} {}", sha256(&bytes)?, rel.display())?;
    }
    sha256(listing.as_bytes())
}

/// Every `build.rs` below `dir`, outside build output and version control.
fn inputs_under(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type()?.is_dir() {
            if name != "target" && name != ".git" {
                inputs_under(&path, out)?;
            }
        } else if name == "build.rs" {
            out.push(path);
        }
    }
    Ok(())
}

/// SHA-256 of `bytes` in hex, by coreutils' `sha256sum`.
fn sha256(bytes: &[u8]) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run sha256sum")?;
    child
        .stdin
        .take()
        .context("sha256sum's stdin")?
        .write_all(bytes)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8(out.stdout)?;
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .context("sha256sum printed nothing")
}

/// `path` as a single-quoted shell word.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_skips_other_suites() {
        let text = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\nTypes: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn mirror_from_one_line_sources() {
        let text = "# comment\ndeb http://mirror.example/debian-security bookworm-security main\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_in("deb http://x/debian trixie main\n"), None);
    }
}
