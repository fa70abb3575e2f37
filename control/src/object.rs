//! Object metadata as the API server maintains it: names, uid, timestamps,
//! generation, resourceVersion, and which parts a write may change.

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::resources::Resource;
use crate::store::Record;

/// Characters `generateName` suffixes are made of (no vowels, as upstream,
/// so generated names never spell words).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const SUFFIX_LEN: usize = 5;

/// `metadata.name`, if set.
pub fn name(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/name").and_then(Value::as_str)
}

/// `metadata.namespace`, if set.
pub fn namespace(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// The current time as Kubernetes writes it (RFC 3339, seconds).
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// A new random UUID for `metadata.uid`.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn metadata_mut(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))
}

/// Checks `apiVersion` and `kind` against the resource the request is for,
/// filling them in when absent.
pub fn check_type(resource: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let expected_version = resource.api_version();
    let map = obj
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("the object must be a JSON object"))?;
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v != expected_version => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({expected_version})"
            )))
        }
        _ => {}
    }
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k != resource.kind => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                resource.kind
            )))
        }
        _ => {}
    }
    map.insert("apiVersion".into(), Value::String(expected_version));
    map.insert("kind".into(), Value::String(resource.kind.into()));
    Ok(())
}

/// Puts the object in the request's namespace: a body naming another
/// namespace is refused; cluster-scoped objects carry none.
pub fn check_namespace(
    resource: &Resource,
    obj: &mut Value,
    path_namespace: Option<&str>,
) -> Result<(), ApiError> {
    let meta = metadata_mut(obj)?;
    if !resource.namespaced {
        meta.remove("namespace");
        return Ok(());
    }
    let ns = path_namespace.unwrap_or("default");
    match meta.get("namespace").and_then(Value::as_str) {
        Some(body_ns) if body_ns != ns => Err(ApiError::bad_request(format!(
            "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
        ))),
        _ => {
            meta.insert("namespace".into(), Value::String(ns.into()));
            Ok(())
        }
    }
}

/// Longest `generateName` base kept (Kubernetes' maxGeneratedNameLength).
const MAX_GENERATED_BASE: usize = 58;

/// Fills in what the server owns for a new object: a name from
/// `generateName` if needed, uid, creationTimestamp and generation.
pub fn prepare_create(resource: &Resource, obj: &mut Value) -> Result<(), ApiError> {
    let meta = metadata_mut(obj)?;
    let has_name = meta
        .get("name")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty());
    if !has_name {
        let Some(base) = meta.get("generateName").and_then(Value::as_str) else {
            return Err(ApiError::invalid(
                resource.kind,
                "",
                &[(
                    "metadata.name".into(),
                    "Required value: name or generateName is required".into(),
                )],
            ));
        };
        // As Kubernetes: the base is cut so that the name stays a valid
        // label (63 characters with the 5-character suffix).
        let mut end = base.len().min(MAX_GENERATED_BASE);
        while !base.is_char_boundary(end) {
            end -= 1;
        }
        let name = format!("{}{}", &base[..end], random_suffix());
        meta.insert("name".into(), Value::String(name));
    }
    for server_owned in [
        "resourceVersion",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(server_owned);
    }
    meta.insert("uid".into(), Value::String(new_uid()));
    meta.insert("creationTimestamp".into(), Value::String(now()));
    meta.insert("generation".into(), json!(1));
    Ok(())
}

/// Carries what a client may not change from `old` into `new` for an update
/// of the object (`subresource` None) or of its status.
///
/// - Identity and lifecycle fields (uid, creationTimestamp, deletion
///   fields) always come from `old`.
/// - An update of the object keeps `old`'s status where the resource has a
///   status subresource; a status update keeps everything but the status.
/// - `generation` goes up when the spec changes.
pub fn prepare_update(
    resource: &Resource,
    old: &Value,
    new: &mut Value,
    subresource: Option<&str>,
) -> Result<(), ApiError> {
    if subresource == Some("status") {
        let status = new.get("status").cloned();
        let metadata = new.get("metadata").cloned();
        *new = old.clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
        // Labels and annotations may change through status updates too.
        for field in ["labels", "annotations"] {
            if let Some(v) = metadata.as_ref().and_then(|m| m.get(field)) {
                metadata_mut(new)?.insert(field.into(), v.clone());
            }
        }
        return Ok(());
    }
    if resource.subresources.contains(&"status") {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(map) = new.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
    let old_generation = old
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let generation = if old.get("spec") != new.get("spec") {
        old_generation + 1
    } else {
        old_generation
    };
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    let meta = metadata_mut(new)?;
    for kept in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "namespace",
        "name",
    ] {
        match old_meta.get(kept) {
            Some(v) => meta.insert(kept.into(), v.clone()),
            None => meta.remove(kept),
        };
    }
    meta.remove("selfLink");
    meta.insert("generation".into(), json!(generation));
    Ok(())
}

/// The object stored in `record`, with its resourceVersion set.
pub fn from_record(record: &Record) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&record.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is corrupt: {e}", record.key)))?;
    set_resource_version(&mut obj, record.mod_revision);
    Ok(obj)
}

/// Sets `metadata.resourceVersion`.
pub fn set_resource_version(obj: &mut Value, revision: u64) {
    if let Ok(meta) = metadata_mut(obj) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// Largest object stored, on either store: etcd's default request limit
/// (1.5 MiB), so objects that fit one store fit the other.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// The bytes to store: the object without its resourceVersion (the
/// store's revision is the source of truth); 413 past
/// [`MAX_OBJECT_BYTES`].
pub fn to_stored(obj: &Value) -> Result<Vec<u8>, ApiError> {
    let mut obj = obj.clone();
    if let Ok(meta) = metadata_mut(&mut obj) {
        meta.remove("resourceVersion");
    }
    let bytes = serde_json::to_vec(&obj)
        .map_err(|e| ApiError::internal(format!("encoding object: {e}")))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::too_large(format_args!(
            "the object is {} bytes, limit is {MAX_OBJECT_BYTES}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// A resourceVersion sent by a client, as a store revision.
pub fn parse_resource_version(rv: &str) -> Result<u64, ApiError> {
    rv.parse()
        .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}: not a number")))
}

fn random_suffix() -> String {
    let bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[..SUFFIX_LEN]
        .iter()
        .map(|b| char::from(SUFFIX_ALPHABET[usize::from(*b) % SUFFIX_ALPHABET.len()]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn create_fills_server_fields_and_generates_names() {
        let pods = find("", "v1", "pods").unwrap();
        let mut pod = json!({"metadata": {"generateName": "web-", "resourceVersion": "9"}});
        check_type(pods, &mut pod).unwrap();
        check_namespace(pods, &mut pod, Some("prod")).unwrap();
        prepare_create(pods, &mut pod).unwrap();
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(pod["metadata"]["namespace"], "prod");
        let name = name(&pod).unwrap();
        assert!(name.starts_with("web-") && name.len() == 9, "{name}");
        assert_eq!(pod["metadata"]["generation"], 1);
        assert!(pod["metadata"].get("resourceVersion").is_none());
        assert_eq!(pod["metadata"]["uid"].as_str().unwrap().len(), 36);

        let long = "a".repeat(100);
        let mut pod = json!({"metadata": {"generateName": long}});
        prepare_create(pods, &mut pod).unwrap();
        let generated = super::name(&pod).unwrap();
        assert_eq!(
            generated.len(),
            63,
            "a generated name stays a label: {generated}"
        );
    }

    #[test]
    fn mismatched_kinds_and_namespaces_are_refused() {
        let pods = find("", "v1", "pods").unwrap();
        let mut svc = json!({"apiVersion": "v1", "kind": "Service"});
        assert_eq!(check_type(pods, &mut svc).unwrap_err().code, 400);
        let mut other = json!({"metadata": {"name": "a", "namespace": "b"}});
        assert_eq!(
            check_namespace(pods, &mut other, Some("c"))
                .unwrap_err()
                .code,
            400
        );
        let mut nameless = json!({"metadata": {}});
        assert_eq!(prepare_create(pods, &mut nameless).unwrap_err().code, 422);
    }

    #[test]
    fn updates_keep_server_fields_and_bump_generation_on_spec_change() {
        let deploys = find("apps", "v1", "deployments").unwrap();
        let old = json!({"metadata": {"name": "d", "namespace": "n", "uid": "u1",
            "creationTimestamp": "t", "generation": 3}, "spec": {"replicas": 1},
            "status": {"replicas": 1}});
        let mut new = json!({"metadata": {"name": "d", "uid": "forged"},
            "spec": {"replicas": 2}, "status": {"replicas": 99}});
        prepare_update(deploys, &old, &mut new, None).unwrap();
        assert_eq!(new["metadata"]["uid"], "u1");
        assert_eq!(new["metadata"]["generation"], 4);
        assert_eq!(new["status"]["replicas"], 1, "status only through /status");

        let mut status = json!({"spec": {"replicas": 50}, "status": {"replicas": 2}});
        prepare_update(deploys, &old, &mut status, Some("status")).unwrap();
        assert_eq!(
            status["spec"]["replicas"], 1,
            "spec only through the object"
        );
        assert_eq!(status["status"]["replicas"], 2);
    }
}
