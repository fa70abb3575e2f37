//! The three patch formats of PATCH requests: JSON patch (RFC 6902), JSON
//! merge patch (RFC 7386), and Kubernetes' strategic merge patch, which
//! `kubectl apply` sends for built-in kinds.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A patch format, from the request's Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json`
    Json,
    /// `application/merge-patch+json`
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
}

impl PatchType {
    /// The patch type of a Content-Type header value.
    pub fn from_content_type(content_type: &str) -> Result<Self, ApiError> {
        let media = content_type.split(';').next().unwrap_or("").trim();
        match media {
            "application/json-patch+json" => Ok(PatchType::Json),
            "application/merge-patch+json" => Ok(PatchType::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
            "application/apply-patch+yaml" => Err(ApiError::unsupported_media_type(
                "application/apply-patch+yaml (server-side apply is not supported; use client-side `kubectl apply`)",
            )),
            other => Err(ApiError::unsupported_media_type(other)),
        }
    }
}

/// Applies `patch` (the request body) to `original`.
pub fn apply(original: &Value, patch: &[u8], kind: PatchType) -> Result<Value, ApiError> {
    let patch: Value = serde_json::from_slice(patch)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let mut target = original.clone();
    match kind {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(patch)
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            apply_json_patch(&mut target, ops)?;
        }
        PatchType::Merge => json_patch::merge(&mut target, &patch),
        PatchType::Strategic => {
            if !patch.is_object() {
                return Err(ApiError::bad_request(
                    "a strategic merge patch must be a JSON object",
                ));
            }
            strategic_merge(&mut target, &patch, "")?;
        }
    }
    Ok(target)
}

/// Most operations in one JSON patch (kube-apiserver's limit).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Most bytes one JSON patch may copy, all its `copy` operations together:
/// `add` and `replace` carry their values in the (bounded) request body,
/// but `copy` can double a document with each operation.
pub const MAX_JSON_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;

/// Applies `ops` in order, refusing a patch with too many operations or
/// whose copies add up past [`MAX_JSON_PATCH_COPY_BYTES`] before the copy
/// that would cross it is made.
fn apply_json_patch(target: &mut Value, ops: json_patch::Patch) -> Result<(), ApiError> {
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(ApiError::too_large(format_args!(
            "the allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    let mut copied = 0usize;
    for op in ops.0 {
        if let json_patch::PatchOperation::Copy(copy) = &op {
            if let Some(source) = target.pointer(copy.from.as_str()) {
                copied = copied.saturating_add(encoded_len(source));
                if copied > MAX_JSON_PATCH_COPY_BYTES {
                    return Err(ApiError::unprocessable_patch(format_args!(
                        "the copy operations add up to more than {MAX_JSON_PATCH_COPY_BYTES} bytes"
                    )));
                }
            }
        }
        // `target` is a copy the caller drops on error: no undo needed.
        json_patch::patch_unsafe(target, &[op]).map_err(ApiError::unprocessable_patch)?;
    }
    Ok(())
}

/// The length of `value` as JSON, counted without building the text.
fn encoded_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Writing a Value to a sink that never fails cannot fail.
    serde_json::to_writer(&mut count, value).ok();
    count.0
}

/// How a list field merges in a strategic merge patch.
enum ListStrategy {
    /// Elements are matched by this key and merged.
    MergeByKey(&'static str),
    /// A list of scalars, merged as a set.
    MergeScalars,
    /// The patch's list replaces the original.
    Replace,
}

/// The patch strategy of a list field of the built-in types (their Go
/// struct tags), keyed by the field's name and what its elements hold.
fn list_strategy(field: &str, elements: &[&Value]) -> ListStrategy {
    let has = |key: &str| elements.iter().any(|e| e.get(key).is_some());
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims" => ListStrategy::MergeByKey("name"),
        "volumeMounts" => ListStrategy::MergeByKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeByKey("devicePath"),
        "ports" if has("containerPort") => ListStrategy::MergeByKey("containerPort"),
        "ports" => ListStrategy::MergeByKey("port"),
        "conditions" | "addresses" => ListStrategy::MergeByKey("type"),
        "hostAliases" => ListStrategy::MergeByKey("ip"),
        "ownerReferences" => ListStrategy::MergeByKey("uid"),
        "topologySpreadConstraints" => ListStrategy::MergeByKey("topologyKey"),
        "finalizers" => ListStrategy::MergeScalars,
        _ => ListStrategy::Replace,
    }
}

const DIRECTIVE: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_LIST: &str = "$deleteFromPrimitiveList/";

/// Merges `patch` into `target` with the strategic rules.
fn strategic_merge(target: &mut Value, patch: &Value, path: &str) -> Result<(), ApiError> {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return Ok(());
    };
    match patch_map.get(DIRECTIVE).and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch_map.clone();
            replaced.remove(DIRECTIVE);
            *target = Value::Object(replaced);
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown patch directive {other:?} at {path:?}"
            )))
        }
        None => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target_map) = target else {
        return Ok(());
    };

    for (key, value) in patch_map {
        if key == DIRECTIVE || key == RETAIN_KEYS || key.starts_with(SET_ORDER) {
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_FROM_LIST) {
            let remove: Vec<&Value> = value
                .as_array()
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            if let Some(Value::Array(list)) = target_map.get_mut(field) {
                list.retain(|v| !remove.contains(&v));
            }
            continue;
        }
        let sub_path = format!("{path}.{key}");
        match value {
            Value::Null => {
                target_map.remove(key);
            }
            Value::Object(_) => {
                let entry = target_map.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(entry, value, &sub_path)?;
                if entry.is_null() {
                    target_map.remove(key);
                }
            }
            Value::Array(items) => {
                let original = match target_map.remove(key) {
                    Some(Value::Array(a)) => a,
                    _ => Vec::new(),
                };
                let merged = merge_list(key, original, items, &sub_path)?;
                target_map.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                target_map.insert(key.clone(), scalar.clone());
            }
        }
    }

    // Order lists as the patch's $setElementOrder directives say.
    for (key, order) in patch_map {
        if let (Some(field), Some(order)) = (key.strip_prefix(SET_ORDER), order.as_array()) {
            if let Some(Value::Array(list)) = target_map.get_mut(field) {
                reorder(field, list, order);
            }
        }
    }
    if let Some(Value::Array(keep)) = patch_map.get(RETAIN_KEYS) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        target_map.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(
    field: &str,
    mut original: Vec<Value>,
    patch: &[Value],
    path: &str,
) -> Result<Vec<Value>, ApiError> {
    let elements: Vec<&Value> = original.iter().chain(patch).collect();
    match list_strategy(field, &elements) {
        ListStrategy::Replace => Ok(patch
            .iter()
            .filter(|v| v.get(DIRECTIVE).is_none())
            .cloned()
            .collect()),
        ListStrategy::MergeScalars => {
            for v in patch {
                if !original.contains(v) {
                    original.push(v.clone());
                }
            }
            Ok(original)
        }
        ListStrategy::MergeByKey(merge_key) => {
            if patch
                .iter()
                .any(|v| v.get(DIRECTIVE).and_then(Value::as_str) == Some("replace"))
            {
                return Ok(patch
                    .iter()
                    .filter(|v| v.get(DIRECTIVE).is_none())
                    .cloned()
                    .collect());
            }
            for item in patch {
                let Some(key_value) = item.get(merge_key) else {
                    return Err(ApiError::bad_request(format!(
                        "an element of {path} has no merge key {merge_key:?}"
                    )));
                };
                let position = original
                    .iter()
                    .position(|o| o.get(merge_key) == Some(key_value));
                let delete = item.get(DIRECTIVE).and_then(Value::as_str) == Some("delete");
                match (position, delete) {
                    (Some(i), true) => {
                        original.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => strategic_merge(&mut original[i], item, path)?,
                    (None, false) => {
                        let mut fresh = Value::Object(Map::new());
                        strategic_merge(&mut fresh, item, path)?;
                        original.push(fresh);
                    }
                }
            }
            Ok(original)
        }
    }
}

/// Puts the elements named in `order` first, in that order.
fn reorder(field: &str, list: &mut [Value], order: &[Value]) {
    let elements: Vec<&Value> = list.iter().collect();
    let key = match list_strategy(field, &elements) {
        ListStrategy::MergeByKey(k) => Some(k),
        _ => None,
    };
    let rank = |v: &Value| {
        order
            .iter()
            .position(|o| match key {
                Some(k) => o.get(k).is_some() && o.get(k) == v.get(k),
                None => o == v,
            })
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(|v| rank(v));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_json_patch_that_copies_a_document_into_itself_is_refused_early() {
        let original = json!({"metadata": {"name": "n", "annotations": {"a": "x".repeat(2000)}}});
        let mut ops = vec![json!({"op": "add", "path": "/metadata/labels", "value": {}})];
        for i in 0..40 {
            ops.push(json!({"op": "copy", "from": "/metadata/annotations",
                "path": format!("/metadata/annotations/c{i}")}));
        }
        let body = serde_json::to_vec(&ops).expect("encode");
        let err = apply(&original, &body, PatchType::Json).expect_err("refused");
        assert_eq!(err.code, 422);
        assert!(err.message.contains("copy operations"), "{}", err.message);
        // A few copies of a small value are fine.
        let body =
            br#"[{"op": "copy", "from": "/metadata/name", "path": "/metadata/generateName"}]"#;
        let patched = apply(&original, body, PatchType::Json).expect("applies");
        assert_eq!(patched["metadata"]["generateName"], "n");
    }

    #[test]
    fn a_json_patch_with_too_many_operations_is_refused() {
        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "n"}))
            .collect();
        let body = serde_json::to_vec(&ops).expect("encode");
        let err = apply(&json!({"metadata": {"name": "n"}}), &body, PatchType::Json)
            .expect_err("refused");
        assert_eq!(err.code, 413);
    }

    #[test]
    fn a_failing_operation_leaves_the_whole_patch_unapplied() {
        let body = br#"[{"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
            {"op": "test", "path": "/metadata/name", "value": "other"}]"#;
        let err = apply(&json!({"metadata": {"name": "n"}}), body, PatchType::Json)
            .expect_err("test fails");
        assert_eq!(err.code, 422);
    }

    fn deployment() -> Value {
        json!({"metadata": {"name": "web", "labels": {"app": "web", "old": "x"}, "finalizers": ["a"]},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [
                {"name": "web", "image": "busybox:1", "env": [{"name": "A", "value": "1"}]},
                {"name": "side", "image": "busybox:1"}]}}}})
    }

    fn smp(original: &Value, patch: Value) -> Value {
        apply(original, patch.to_string().as_bytes(), PatchType::Strategic).unwrap()
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let out = smp(
            &deployment(),
            json!({"metadata": {"labels": {"old": null}},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [
                {"name": "web", "image": "busybox:2", "env": [{"name": "B", "value": "2"}]}]}}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(out["spec"]["replicas"], 3);
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 2, "the sidecar is kept");
        assert_eq!(containers[0]["image"], "busybox:2");
        assert_eq!(
            containers[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
        );
    }

    #[test]
    fn strategic_directives() {
        let out = smp(
            &deployment(),
            json!({"metadata": {"finalizers": ["b"]},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "side"}, {"name": "web"}],
                "containers": [{"name": "web", "$patch": "delete"}]}}}}),
        );
        let containers = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1);
        assert_eq!(containers[0]["name"], "side");
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b"]));

        let out = smp(
            &deployment(),
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!([]));

        let out = smp(
            &deployment(),
            json!({"spec": {"template": {"spec": {"$patch": "replace", "containers": []}}}}),
        );
        assert_eq!(out["spec"]["template"]["spec"], json!({"containers": []}));
    }

    #[test]
    fn merge_and_json_patches() {
        let out = apply(
            &deployment(),
            br#"{"spec":{"replicas":5}}"#,
            PatchType::Merge,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        let out = apply(
            &deployment(),
            br#"[{"op":"replace","path":"/spec/replicas","value":7}]"#,
            PatchType::Json,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 7);
        let failed = apply(
            &deployment(),
            br#"[{"op":"test","path":"/spec/replicas","value":9}]"#,
            PatchType::Json,
        );
        assert_eq!(failed.unwrap_err().code, 422);
        assert_eq!(
            apply(&deployment(), b"{not json", PatchType::Merge)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            PatchType::from_content_type("text/plain").unwrap_err().code,
            415
        );
    }
}
