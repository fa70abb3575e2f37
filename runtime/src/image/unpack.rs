//! Unpacking a layer (plain or gzip tar) into a directory that serves as
//! an overlayfs lower layer: OCI whiteouts become overlayfs whiteouts.
//!
//! - `.wh.<name>` (a file deleted by this layer) becomes a character device
//!   0:0 named `<name>`, which hides `<name>` of the layers below;
//! - `.wh..wh..opq` (a directory whose lower contents are replaced) sets the
//!   `trusted.overlay.opaque` attribute on its directory.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};

use crate::image::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Unpacks the tar (gzip-compressed or not: the content decides) at
/// `blob` into `dest`, which must exist.
pub fn unpack_layer(blob: &Path, dest: &Path) -> Result<(), ImageError> {
    let io = |source| ImageError::Io {
        path: blob.to_owned(),
        source,
    };
    let mut file = BufReader::new(File::open(blob).map_err(io)?);
    let mut magic = [0u8; 2];
    let gzip = {
        let buf = std::io::BufRead::fill_buf(&mut file).map_err(io)?;
        if buf.len() >= 2 {
            magic.copy_from_slice(&buf[..2]);
        }
        magic == [0x1f, 0x8b]
    };
    let reader: Box<dyn Read> = if gzip {
        Box::new(GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);
    let entries = archive.entries().map_err(io)?;
    for entry in entries {
        let mut entry = entry.map_err(io)?;
        let path = entry.path().map_err(io)?.into_owned();
        let relative = safe_relative(&path).ok_or_else(|| ImageError::UnsafePath {
            blob: blob.to_owned(),
            path: path.clone(),
        })?;
        let name = relative
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        match name.as_deref() {
            Some(OPAQUE) => {
                let dir = dest.join(relative.parent().unwrap_or(Path::new("")));
                std::fs::create_dir_all(&dir).map_err(|source| ImageError::Io {
                    path: dir.clone(),
                    source,
                })?;
                crate::image::xattr::set(&dir, "trusted.overlay.opaque", b"y")?;
            }
            Some(n) if n.starts_with(WHITEOUT_PREFIX) => {
                let hidden = n.trim_start_matches(WHITEOUT_PREFIX);
                let parent = dest.join(relative.parent().unwrap_or(Path::new("")));
                std::fs::create_dir_all(&parent).map_err(|source| ImageError::Io {
                    path: parent.clone(),
                    source,
                })?;
                let target = parent.join(hidden);
                remove_any(&target)?;
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).map_err(|e| {
                    ImageError::Io {
                        path: target.clone(),
                        source: e.into(),
                    }
                })?;
            }
            _ => {
                entry.unpack_in(dest).map_err(|source| ImageError::Io {
                    path: dest.join(&relative),
                    source,
                })?;
            }
        }
    }
    Ok(())
}

/// The entry's path without a leading `/` or `./`; `None` if it climbs out.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> Result<(), ImageError> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_may_not_climb_out() {
        assert_eq!(
            safe_relative(Path::new("./bin/sh")),
            Some(PathBuf::from("bin/sh"))
        );
        assert_eq!(
            safe_relative(Path::new("/etc/passwd")),
            Some(PathBuf::from("etc/passwd"))
        );
        assert_eq!(safe_relative(Path::new("a/../../x")), None);
    }
}
