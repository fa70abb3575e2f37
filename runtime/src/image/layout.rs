//! Reading an OCI image layout (`oci-layout`, `index.json`, `blobs/`):
//! every image it names, with every blob verified against its descriptor.

use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use crate::image::digest::{read_verified, verify_file, Digest};
use crate::image::ImageError;

/// The annotation naming an image in a layout's index.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image of a layout, verified.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    /// Its name: the index's ref-name annotation, else the manifest digest.
    pub name: String,
    /// The manifest's digest.
    pub manifest_digest: Digest,
    /// The manifest's bytes as stored.
    pub manifest: Vec<u8>,
    /// The configuration blob's digest.
    pub config_digest: Digest,
    /// The parsed configuration (entrypoint, command, environment …).
    pub config: ImageConfiguration,
    /// The layers, bottom first: digest, media type, blob path in the layout.
    pub layers: Vec<(Digest, MediaType, PathBuf)>,
}

/// Reads every image of the layout at `dir`, verifying all blobs (size and
/// SHA-256) before returning: a layout with one bad blob is refused whole.
pub fn read(dir: &Path) -> Result<Vec<LayoutImage>, ImageError> {
    let marker = dir.join("oci-layout");
    let text = std::fs::read_to_string(&marker).map_err(|source| ImageError::Io {
        path: marker.clone(),
        source,
    })?;
    let header: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ImageError::Json {
            path: marker.clone(),
            source,
        })?;
    if header["imageLayoutVersion"] != "1.0.0" {
        return Err(ImageError::Layout {
            dir: dir.to_owned(),
            reason: format!(
                "unsupported imageLayoutVersion {}",
                header["imageLayoutVersion"]
            ),
        });
    }
    let index_path = dir.join("index.json");
    let index: ImageIndex = parse_file(&index_path)?;
    let mut images = Vec::new();
    for descriptor in index.manifests() {
        let name = descriptor
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned());
        let manifest = resolve_manifest(dir, descriptor)?;
        let (digest, bytes) = manifest;
        images.push(read_image(dir, name, digest, bytes)?);
    }
    if images.is_empty() {
        return Err(ImageError::Layout {
            dir: dir.to_owned(),
            reason: "index.json lists no image".to_owned(),
        });
    }
    Ok(images)
}

/// A manifest descriptor, or an index whose linux/amd64 manifest is taken.
fn resolve_manifest(dir: &Path, descriptor: &Descriptor) -> Result<(Digest, Vec<u8>), ImageError> {
    let digest = Digest::parse(descriptor.digest().as_ref())?;
    let bytes = read_verified(&blob_path(dir, &digest), &digest, descriptor.size())?;
    if *descriptor.media_type() != MediaType::ImageIndex {
        return Ok((digest, bytes));
    }
    let nested: ImageIndex = parse_bytes(&blob_path(dir, &digest), &bytes)?;
    let chosen = nested
        .manifests()
        .iter()
        .find(|m| {
            m.platform().as_ref().is_none_or(|p| {
                p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
            })
        })
        .ok_or_else(|| ImageError::Layout {
            dir: dir.to_owned(),
            reason: format!("index {digest} has no linux/amd64 manifest"),
        })?;
    resolve_manifest(dir, chosen)
}

fn read_image(
    dir: &Path,
    name: Option<String>,
    manifest_digest: Digest,
    bytes: Vec<u8>,
) -> Result<LayoutImage, ImageError> {
    let manifest_path = blob_path(dir, &manifest_digest);
    let manifest: ImageManifest = parse_bytes(&manifest_path, &bytes)?;
    let config_digest = Digest::parse(manifest.config().digest().as_ref())?;
    let config_path = blob_path(dir, &config_digest);
    let config_bytes = read_verified(&config_path, &config_digest, manifest.config().size())?;
    let config: ImageConfiguration = parse_bytes(&config_path, &config_bytes)?;
    let mut layers = Vec::new();
    for layer in manifest.layers() {
        let digest = Digest::parse(layer.digest().as_ref())?;
        let path = blob_path(dir, &digest);
        match layer.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerGzip => {}
            MediaType::Other(t)
                if t.ends_with("tar") || t.ends_with("tar.gzip") || t.ends_with("tar+gzip") => {}
            other => {
                return Err(ImageError::Layout {
                    dir: dir.to_owned(),
                    reason: format!("layer {digest} has unsupported media type {other}"),
                })
            }
        }
        verify_file(&path, &digest, layer.size())?;
        layers.push((digest, layer.media_type().clone(), path));
    }
    Ok(LayoutImage {
        name: name.unwrap_or_else(|| manifest_digest.to_string()),
        manifest_digest,
        manifest: bytes,
        config_digest,
        config,
        layers,
    })
}

/// `<dir>/blobs/sha256/<hex>`.
pub fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(digest.hex())
}

fn parse_file<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_bytes(path, &bytes)
}

fn parse_bytes<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, ImageError> {
    serde_json::from_slice(bytes).map_err(|source| ImageError::Json {
        path: path.to_owned(),
        source,
    })
}
