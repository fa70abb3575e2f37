//! Writing an OCI image layout from directories, one gzip layer each: how
//! `cargo xtask image` makes the busybox test image without a registry.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use serde_json::json;

use crate::image::layout::REF_NAME;
use crate::image::{Digest, ImageError};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What goes into the image's configuration.
#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// The name in the layout's index (`busybox:latest`).
    pub name: String,
    /// The default command.
    pub cmd: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
}

/// Adds image `opts.name` to the layout at `out` (made if missing; an image
/// of the same name is replaced): one layer per directory of `layers`,
/// bottom first, stored as they are (symlinks kept, `.wh.` files included
/// verbatim, so a directory can carry whiteouts). Returns the manifest digest.
pub fn pack(layers: &[&Path], out: &Path, opts: &PackOptions) -> Result<Digest, ImageError> {
    let blobs = out.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let mut layer_descriptors = Vec::new();
    let mut diff_ids = Vec::new();
    for dir in layers {
        let tar = tar_dir(dir)?;
        diff_ids.push(Digest::of(&tar).to_string());
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).map_err(io(dir))?;
        let compressed = gz.finish().map_err(io(dir))?;
        let digest = write_blob(out, &compressed)?;
        layer_descriptors.push(json!({"mediaType": LAYER_TYPE, "digest": digest.to_string(), "size": compressed.len()}));
    }
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": opts.env, "Cmd": opts.cmd },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config_bytes = config.to_string().into_bytes();
    let config_digest = write_blob(out, &config_bytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, "digest": config_digest.to_string(), "size": config_bytes.len()},
        "layers": layer_descriptors,
    });
    let manifest_bytes = manifest.to_string().into_bytes();
    let manifest_digest = write_blob(out, &manifest_bytes)?;

    let index_path = out.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match fs::read(&index_path) {
        Ok(bytes) => {
            let index: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|source| ImageError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            index["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(_) => Vec::new(),
    };
    manifests.retain(|m| m["annotations"][REF_NAME] != opts.name.as_str());
    manifests.push(json!({
        "mediaType": MANIFEST_TYPE,
        "digest": manifest_digest.to_string(),
        "size": manifest_bytes.len(),
        "annotations": { REF_NAME: opts.name },
    }));
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    fs::write(&index_path, index.to_string()).map_err(io(&index_path))?;
    let marker = out.join("oci-layout");
    fs::write(&marker, json!({"imageLayoutVersion": "1.0.0"}).to_string()).map_err(io(&marker))?;
    Ok(manifest_digest)
}

/// The tar of a directory's contents (paths relative to it, symlinks kept).
fn tar_dir(dir: &Path) -> Result<Vec<u8>, ImageError> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).map_err(io(dir))?;
    builder.into_inner().map_err(io(dir))
}

fn write_blob(out: &Path, bytes: &[u8]) -> Result<Digest, ImageError> {
    let digest = Digest::of(bytes);
    let path = out.join("blobs").join("sha256").join(digest.hex());
    fs::write(&path, bytes).map_err(io(&path))?;
    Ok(digest)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Io { path, source }
}
