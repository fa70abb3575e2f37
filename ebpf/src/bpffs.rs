//! The BPF file system, where maps and links are pinned.

use std::fs;
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::statfs::{statfs, BPF_FS_MAGIC};

use crate::Error;

/// The machine's usual bpffs mount point.
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf";

/// Whether `path` lies on a mounted bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at `root` unless one is already there.
pub fn ensure_mounted(root: &Path) -> Result<(), Error> {
    if is_bpffs(root) {
        return Ok(());
    }
    fs::create_dir_all(root).map_err(|e| Error::io("create bpffs mount point", root, e))?;
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| Error::io("mount bpffs at", root, e.into()))?;
    tracing::info!(root = %root.display(), "mounted bpffs");
    Ok(())
}

/// Creates `dir` (and its parents) for pins; it must be inside a bpffs.
pub fn create_pin_dir(dir: &Path) -> Result<(), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create pin directory", dir, e))?;
    if !is_bpffs(dir) {
        return Err(Error::io(
            "pin directory is not on a bpffs",
            dir,
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        ));
    }
    Ok(())
}
