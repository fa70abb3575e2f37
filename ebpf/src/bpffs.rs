//! The BPF file system, where maps and links are pinned.

use std::fs;
use std::path::{Path, PathBuf};

use libbpf_rs::{MapCore, MapFlags, MapHandle};
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

/// A pinned map moved aside (to `<name>_resizing`: bpffs takes no dot in
/// a name) because its size changed: after the load has made the new map,
/// [`copy_resized`] copies its entries over and removes it.
#[derive(Debug)]
#[must_use = "the old map's entries are copied by copy_resized after the load"]
pub(crate) struct Resized {
    old: PathBuf,
    new: PathBuf,
}

/// Sets an opened map's size and pins it at `<pin_dir>/<name>`. An
/// existing pin of the same layout and size is reused by the load that
/// follows; one of another type, key or value (left by an older Berth) is
/// removed, so the map is created anew and whoever programs it writes it
/// again; one of another size (the configuration changed) is moved aside,
/// to be copied into the new map after the load (the returned [`Resized`]).
pub(crate) fn size_and_pin(
    map: &mut libbpf_rs::OpenMapMut<'_>,
    name: &str,
    size: u32,
    pin_dir: &Path,
) -> Result<Option<Resized>, Error> {
    let path = pin_dir.join(name);
    let aside = pin_dir.join(format!("{name}_resizing"));
    let mut resized = None;
    if path.exists() {
        let pinned = MapHandle::from_pinned_path(&path)
            .map_err(|e| Error::bpf(format!("open pinned map {}", path.display()), e))?;
        let old = (pinned.map_type(), pinned.key_size(), pinned.value_size());
        let new = (map.map_type(), map.key_size(), map.value_size());
        if old != new {
            tracing::warn!(
                pin = %path.display(),
                ?old,
                ?new,
                "pinned map has an older layout (type, key and value size): recreating it"
            );
            fs::remove_file(&path).map_err(|e| Error::io("remove pinned map", &path, e))?;
        } else if pinned.max_entries() != size {
            tracing::info!(
                pin = %path.display(),
                from = pinned.max_entries(),
                to = size,
                "map size changed: its entries move to a new map"
            );
            if aside.exists() {
                // A resize that was interrupted: the map aside holds the
                // entries, this one only part of them.
                fs::remove_file(&path).map_err(|e| Error::io("remove pinned map", &path, e))?;
            } else {
                fs::rename(&path, &aside)
                    .map_err(|e| Error::io("move pinned map aside", &path, e))?;
            }
        }
    }
    if aside.exists() {
        resized = Some(Resized {
            old: aside,
            new: path.clone(),
        });
    }
    map.set_max_entries(size)
        .map_err(|e| Error::bpf(format!("size {name}"), e))?;
    map.set_pin_path(path)
        .map_err(|e| Error::bpf(format!("set pin path of {name}"), e))?;
    Ok(resized)
}

/// Copies the entries of each map moved aside by [`size_and_pin`] into the
/// new map pinned in its place, then removes the old one. Entries the new
/// map has no room for (it shrank) are dropped with a warning; whoever
/// programs the map writes what it needs again.
pub(crate) fn copy_resized(resized: Vec<Resized>) -> Result<(), Error> {
    for Resized { old, new } in resized {
        let open = |path: &Path| {
            MapHandle::from_pinned_path(path)
                .map_err(|e| Error::bpf(format!("open pinned map {}", path.display()), e))
        };
        let (from, to) = (open(&old)?, open(&new)?);
        let (mut copied, mut dropped) = (0usize, 0usize);
        for key in from.keys() {
            let value = from
                .lookup(&key, MapFlags::ANY)
                .map_err(|e| Error::bpf(format!("read {}", old.display()), e))?;
            if let Some(value) = value {
                match to.update(&key, &value, MapFlags::ANY) {
                    Ok(()) => copied += 1,
                    Err(_) => dropped += 1,
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(map = %new.display(), copied, dropped, "the resized map is too small for every entry");
        } else {
            tracing::info!(map = %new.display(), copied, "entries moved to the resized map");
        }
        fs::remove_file(&old).map_err(|e| Error::io("remove the old map", &old, e))?;
    }
    Ok(())
}

/// Sizes and pins the maps every program shares (`bpf/lb4.h`), on the
/// opened maps of any skeleton that includes it; `$config` has `pin_dir`
/// and `map_sizes`. Evaluates to the maps moved aside for a new size
/// (`Result<Vec<Resized>, Error>`), to copy after the load.
macro_rules! pin_lb4_maps {
    ($maps:expr, $config:expr) => {{
        let sizes = &$config.map_sizes;
        [
            (
                &mut $maps.lb4_services,
                $crate::lb_maps::SERVICES_MAP,
                sizes.services,
            ),
            (
                &mut $maps.lb4_slots,
                $crate::lb_maps::SLOTS_MAP,
                sizes.slots,
            ),
            (
                &mut $maps.lb4_backends,
                $crate::lb_maps::BACKENDS_MAP,
                sizes.backends,
            ),
            (
                &mut $maps.lb4_reverse_sk,
                $crate::sock_lb::REVERSE_MAP,
                sizes.reverse,
            ),
            (
                &mut $maps.lb4_affinity,
                $crate::lb_maps::AFFINITY_MAP,
                sizes.affinity,
            ),
            (
                &mut $maps.lb4_maglev,
                $crate::lb_maps::MAGLEV_MAP,
                sizes.maglev,
            ),
        ]
        .into_iter()
        .map(|(map, name, size)| $crate::bpffs::size_and_pin(map, name, size, &$config.pin_dir))
        .filter_map(Result::transpose)
        .collect::<Result<Vec<_>, $crate::Error>>()
    }};
}
pub(crate) use pin_lb4_maps;
