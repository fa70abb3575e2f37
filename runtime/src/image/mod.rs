//! The image store: OCI image layouts imported under a state directory,
//! layers unpacked once and shared, and per-container root filesystems as
//! overlay mounts (read-only image layers below, a private upper
//! directory), removed when the container goes.
//!
//! ```text
//! <dir>/blobs/sha256/<hex>       imported blobs, verified
//! <dir>/layers/<hex>/            a layer unpacked (overlayfs whiteouts)
//! <dir>/images.json              name → manifest digest
//! <dir>/rootfs/<id>/{upper,work,merged}
//! ```

mod digest;
pub mod layout;
pub mod pack;
mod unpack;
mod xattr;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::image::{ImageConfiguration, ImageManifest};

pub use digest::Digest;
pub use unpack::unpack_layer;

/// What the image store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON document of a layout or of the store does not parse.
    #[error("{path} is not valid: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// Not a `sha256:<hex>` digest.
    #[error("bad digest {0:?}: expected sha256:<64 hex digits>")]
    BadDigest(String),
    /// A blob's content does not match the digest that names it.
    #[error("blob {path} has digest {got}, but its descriptor says {want}")]
    DigestMismatch {
        path: PathBuf,
        want: Digest,
        got: Digest,
    },
    /// A blob's size does not match its descriptor.
    #[error("blob {path} has {got} bytes, but its descriptor says {want}")]
    SizeMismatch { path: PathBuf, want: u64, got: u64 },
    /// The layout is not one this store reads.
    #[error("image layout {dir}: {reason}")]
    Layout { dir: PathBuf, reason: String },
    /// A layer entry would land outside the layer's directory.
    #[error("layer {blob} holds an entry outside its root: {path}")]
    UnsafePath { blob: PathBuf, path: PathBuf },
    /// No image of that name was imported.
    #[error("no image {0:?} in the store")]
    UnknownImage(String),
    /// The container already has a root filesystem from the store.
    #[error("container {0:?} already has a root filesystem")]
    RootfsExists(String),
    /// Mounting or unmounting the overlay failed.
    #[error("{op} {path}: {source}")]
    Mount {
        op: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct Image {
    /// The name it was imported under.
    pub name: String,
    /// Its manifest's digest.
    pub digest: Digest,
    /// The layers' unpacked directories, bottom first.
    pub layers: Vec<PathBuf>,
    /// Entrypoint, command, environment, working directory, user.
    pub config: ImageConfiguration,
}

/// An image store rooted at a directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// Opens (making if needed) the store at `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, ImageError> {
        let dir = dir.into();
        for sub in ["blobs/sha256", "layers", "rootfs"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|source| ImageError::Io { path, source })?;
        }
        Ok(Self { dir })
    }

    /// Imports every image of the OCI layout at `layout`. Every blob is
    /// verified before anything is stored, so a layout with a bad blob
    /// changes nothing. Layers already unpacked are reused. Returns the
    /// names imported.
    pub fn import(&self, layout: &Path) -> Result<Vec<String>, ImageError> {
        let images = layout::read(layout)?;
        let mut names = Vec::new();
        let mut refs = self.refs()?;
        for image in &images {
            let mut blobs = vec![(
                image.manifest_digest.clone(),
                layout::blob_path(layout, &image.manifest_digest),
            )];
            blobs.push((
                image.config_digest.clone(),
                layout::blob_path(layout, &image.config_digest),
            ));
            blobs.extend(image.layers.iter().map(|(d, _, p)| (d.clone(), p.clone())));
            for (digest, source) in &blobs {
                self.store_blob(digest, source)?;
            }
            for (digest, _, _) in &image.layers {
                self.unpack_once(digest)?;
            }
            refs.insert(image.name.clone(), image.manifest_digest.to_string());
            names.push(image.name.clone());
        }
        self.write_refs(&refs)?;
        Ok(names)
    }

    /// The imported images' names and manifest digests.
    pub fn list(&self) -> Result<BTreeMap<String, String>, ImageError> {
        self.refs()
    }

    /// The image imported as `name`.
    pub fn image(&self, name: &str) -> Result<Image, ImageError> {
        let refs = self.refs()?;
        let digest = refs
            .get(name)
            .ok_or_else(|| ImageError::UnknownImage(name.to_owned()))
            .and_then(|d| Digest::parse(d))?;
        let manifest: ImageManifest = self.read_json(&self.blob(&digest))?;
        let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
        let config: ImageConfiguration = self.read_json(&self.blob(&config_digest))?;
        let layers = manifest
            .layers()
            .iter()
            .map(|l| Digest::parse(l.digest().as_ref()).map(|d| self.layer_dir(&d)))
            .collect::<Result<_, _>>()?;
        Ok(Image {
            name: name.to_owned(),
            digest,
            layers,
            config,
        })
    }

    /// Mounts a root filesystem for container `id` from image `name`: the
    /// image's layers read-only below a private upper directory. Returns
    /// the mounted directory.
    pub fn mount_rootfs(&self, id: &str, name: &str) -> Result<PathBuf, ImageError> {
        let image = self.image(name)?;
        let base = self.rootfs_dir(id)?;
        if base.exists() {
            return Err(ImageError::RootfsExists(id.to_owned()));
        }
        let merged = base.join("merged");
        let made = self.mount_overlay(&base, &merged, &image.layers);
        if let Err(e) = made {
            if let Err(cleanup) = fs::remove_dir_all(&base) {
                tracing::warn!(path = %base.display(), error = %cleanup, "removing a half-made rootfs");
            }
            return Err(e);
        }
        Ok(merged)
    }

    fn mount_overlay(
        &self,
        base: &Path,
        merged: &Path,
        layers: &[PathBuf],
    ) -> Result<(), ImageError> {
        for sub in ["upper", "work", "merged"] {
            let path = base.join(sub);
            fs::create_dir_all(&path).map_err(|source| ImageError::Io { path, source })?;
        }
        // overlayfs lists the top layer first.
        let lower: Vec<String> = layers
            .iter()
            .rev()
            .map(|l| l.display().to_string())
            .collect();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            base.join("upper").display(),
            base.join("work").display()
        );
        mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|source| ImageError::Mount {
            op: "mount overlay on",
            path: merged.to_owned(),
            source,
        })
    }

    /// Unmounts and removes container `id`'s root filesystem (its upper
    /// directory with it). Nothing to remove is not an error.
    pub fn remove_rootfs(&self, id: &str) -> Result<(), ImageError> {
        let base = self.rootfs_dir(id)?;
        let merged = base.join("merged");
        match umount2(&merged, MntFlags::empty()) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(source) => {
                return Err(ImageError::Mount {
                    op: "unmount",
                    path: merged,
                    source,
                })
            }
        }
        match fs::remove_dir_all(&base) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ImageError::Io { path: base, source }),
        }
    }

    fn rootfs_dir(&self, id: &str) -> Result<PathBuf, ImageError> {
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(ImageError::UnsafePath {
                blob: self.dir.join("rootfs"),
                path: PathBuf::from(id),
            });
        }
        Ok(self.dir.join("rootfs").join(id))
    }

    fn blob(&self, digest: &Digest) -> PathBuf {
        layout::blob_path(&self.dir, digest)
    }

    fn layer_dir(&self, digest: &Digest) -> PathBuf {
        self.dir.join("layers").join(digest.hex())
    }

    /// Copies a verified blob in (through a temporary name, so a partial
    /// copy is never taken for the blob).
    fn store_blob(&self, digest: &Digest, source: &Path) -> Result<(), ImageError> {
        let dest = self.blob(digest);
        if dest.exists() {
            return Ok(());
        }
        let tmp = dest.with_extension("tmp");
        fs::copy(source, &tmp).map_err(|e| ImageError::Io {
            path: tmp.clone(),
            source: e,
        })?;
        fs::rename(&tmp, &dest).map_err(|source| ImageError::Io { path: dest, source })
    }

    /// Unpacks a layer unless it already is (into a temporary directory
    /// renamed when complete).
    fn unpack_once(&self, digest: &Digest) -> Result<(), ImageError> {
        let dest = self.layer_dir(digest);
        if dest.exists() {
            return Ok(());
        }
        let tmp = self
            .dir
            .join("layers")
            .join(format!(".tmp-{}", digest.hex()));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|source| ImageError::Io {
                path: tmp.clone(),
                source,
            })?;
        }
        fs::create_dir_all(&tmp).map_err(|source| ImageError::Io {
            path: tmp.clone(),
            source,
        })?;
        if let Err(e) = unpack_layer(&self.blob(digest), &tmp) {
            if let Err(cleanup) = fs::remove_dir_all(&tmp) {
                tracing::warn!(path = %tmp.display(), error = %cleanup, "removing a half-unpacked layer");
            }
            return Err(e);
        }
        fs::rename(&tmp, &dest).map_err(|source| ImageError::Io { path: dest, source })
    }

    fn refs(&self) -> Result<BTreeMap<String, String>, ImageError> {
        let path = self.dir.join("images.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json { path, source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(ImageError::Io { path, source }),
        }
    }

    fn write_refs(&self, refs: &BTreeMap<String, String>) -> Result<(), ImageError> {
        let path = self.dir.join("images.json");
        let tmp = self.dir.join("images.json.tmp");
        let text = serde_json::to_vec_pretty(refs).map_err(|source| ImageError::Json {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, text).map_err(|source| ImageError::Io {
            path: tmp.clone(),
            source,
        })?;
        fs::rename(&tmp, &path).map_err(|source| ImageError::Io { path, source })
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<T, ImageError> {
        let bytes = fs::read(path).map_err(|source| ImageError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
            path: path.to_owned(),
            source,
        })
    }
}
