//! Validation of objects before they are stored: they must decode as their
//! Kubernetes type, carry valid names and labels, the fields each kind
//! requires, and leave immutable fields alone.

use k8s_openapi::api::{apps, coordination, core, discovery};
use serde_json::Value;

use crate::error::ApiError;
use crate::object;
use crate::resources::Resource;

/// What to do with fields the type does not know (`fieldValidation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn the client (the default).
    Warn,
    /// Refuse the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter; absent means Warn, as upstream.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value {
            None | Some("") | Some("Warn") => Ok(FieldValidation::Warn),
            Some("Ignore") => Ok(FieldValidation::Ignore),
            Some("Strict") => Ok(FieldValidation::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }
}

/// One validation failure: (field path, message).
type Cause = (String, String);

/// Checks `obj` (and, on update, what changed since `old`). Returns
/// warnings for the client. Unknown fields fail a strict validation and
/// are otherwise removed from `obj` (with a warning under Warn).
pub fn validate(
    resource: &Resource,
    obj: &mut Value,
    old: Option<&Value>,
    fields: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let name = object::name(obj).unwrap_or_default().to_string();
    let decoded = roundtrip(resource.kind, obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = resource.kind,
            version = resource.version
        ))
    })?;
    let mut unknown = Vec::new();
    let strict = matches!(fields, FieldValidation::Strict);
    unknown_fields(obj, &decoded, "", &mut unknown, !strict);
    let warnings = match fields {
        FieldValidation::Strict if !unknown.is_empty() => {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                list.join(", "),
                kind = resource.kind,
                version = resource.version
            )));
        }
        FieldValidation::Warn => unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect(),
        _ => Vec::new(),
    };

    let mut causes = Vec::new();
    check_name(resource, &name, &mut causes);
    check_labels(obj, &mut causes);
    match resource.kind {
        "Pod" => check_pod_spec(obj.get("spec"), "spec", &mut causes),
        "Deployment" | "ReplicaSet" => check_workload(obj, old, &mut causes),
        "ReplicationController" => check_replication_controller(obj, &mut causes),
        "Service" => check_service(obj, old, &mut causes),
        "EndpointSlice" => check_endpoint_slice(obj, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(warnings)
    } else {
        Err(ApiError::invalid(resource.kind, &name, &causes))
    }
}

/// Decodes `obj` as the Kubernetes type of `kind` and encodes it again.
fn roundtrip(kind: &str, obj: &Value) -> Result<Value, serde_json::Error> {
    fn rt<T: serde::de::DeserializeOwned + serde::Serialize>(
        obj: &Value,
    ) -> Result<Value, serde_json::Error> {
        serde_json::to_value(T::deserialize(obj)?)
    }
    match kind {
        "Namespace" => rt::<core::v1::Namespace>(obj),
        "Node" => rt::<core::v1::Node>(obj),
        "Pod" => rt::<core::v1::Pod>(obj),
        "Service" => rt::<core::v1::Service>(obj),
        "Endpoints" => rt::<core::v1::Endpoints>(obj),
        "Event" => rt::<core::v1::Event>(obj),
        "ConfigMap" => rt::<core::v1::ConfigMap>(obj),
        "EndpointSlice" => rt::<discovery::v1::EndpointSlice>(obj),
        "ReplicationController" => rt::<core::v1::ReplicationController>(obj),
        "ReplicaSet" => rt::<apps::v1::ReplicaSet>(obj),
        "Deployment" => rt::<apps::v1::Deployment>(obj),
        "Lease" => rt::<coordination::v1::Lease>(obj),
        _ => Ok(obj.clone()),
    }
}

/// Paths of fields in `input` that decoding dropped (unknown to the type);
/// with `strip`, those fields are removed from `input`, as kube-apiserver
/// drops them unless validation is strict.
fn unknown_fields(
    input: &mut Value,
    decoded: &Value,
    path: &str,
    out: &mut Vec<String>,
    strip: bool,
) {
    match (input, decoded) {
        (Value::Object(a), Value::Object(b)) => {
            let mut dropped = Vec::new();
            for (key, value) in a.iter_mut() {
                let sub = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match b.get(key) {
                    Some(d) => unknown_fields(value, d, &sub, out, strip),
                    None if !value.is_null() && !is_empty_container(value) => {
                        out.push(sub);
                        dropped.push(key.clone());
                    }
                    None => {}
                }
            }
            if strip {
                for key in dropped {
                    a.remove(&key);
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter_mut().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out, strip);
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

/// DNS-1123 label: at most 63 lower-case alphanumerics or '-', starting and
/// ending alphanumeric.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn check_name(resource: &Resource, name: &str, causes: &mut Vec<Cause>) {
    let (ok, rule) = match resource.kind {
        "Namespace" => (is_dns_label(name), "a lowercase RFC 1123 label"),
        "Service" => (
            is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
            "a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)",
        ),
        _ => (is_dns_subdomain(name), "a lowercase RFC 1123 subdomain"),
    };
    if !ok {
        causes.push((
            "metadata.name".into(),
            format!("Invalid value: \"{name}\": must be {rule}"),
        ));
    }
}

/// Label values: at most 63 characters of alphanumerics, '-', '_' and '.',
/// starting and ending alphanumeric (or empty).
fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// Label keys: an optional DNS subdomain prefix and '/', then a name like a
/// non-empty label value.
fn is_label_key(k: &str) -> bool {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

fn check_labels(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(labels) = obj.pointer("/metadata/labels").and_then(Value::as_object) else {
        return;
    };
    for (key, value) in labels {
        if !is_label_key(key) {
            causes.push((
                "metadata.labels".into(),
                format!("Invalid value: \"{key}\": not a valid label key"),
            ));
        }
        if !value.as_str().is_some_and(is_label_value) {
            causes.push((
                format!("metadata.labels.{key}"),
                format!("Invalid value: {value}: not a valid label value"),
            ));
        }
    }
}

fn check_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array);
    let Some(containers) = containers.filter(|c| !c.is_empty()) else {
        causes.push((format!("{path}.containers"), "Required value".into()));
        return;
    };
    let mut names = std::collections::HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or_default();
        if !is_dns_label(name) {
            causes.push((
                format!("{path}.containers[{i}].name"),
                format!("Invalid value: \"{name}\": must be a lowercase RFC 1123 label"),
            ));
        } else if !names.insert(name) {
            causes.push((
                format!("{path}.containers[{i}].name"),
                format!("Duplicate value: \"{name}\""),
            ));
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push((
                format!("{path}.containers[{i}].image"),
                "Required value".into(),
            ));
        }
    }
}

/// `spec.replicas`, if set, is not negative.
fn check_replicas(spec: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(replicas) = spec.and_then(|s| s.get("replicas")).and_then(Value::as_i64) {
        if replicas < 0 {
            causes.push((
                "spec.replicas".into(),
                format!("Invalid value: {replicas}: must be greater than or equal to 0"),
            ));
        }
    }
}

fn check_workload(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    check_replicas(spec, causes);
    let selector = spec.and_then(|s| s.get("selector"));
    let match_labels = selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object);
    let has_expressions = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .is_some_and(|e| !e.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !has_expressions {
        causes.push(("spec.selector".into(), "Required value".into()));
    } else if let Some(match_labels) = match_labels {
        let template_labels = spec
            .and_then(|s| s.pointer("/template/metadata/labels"))
            .and_then(Value::as_object);
        let matches = match_labels
            .iter()
            .all(|(k, v)| template_labels.and_then(|t| t.get(k)) == Some(v));
        if !matches {
            causes.push((
                "spec.template.metadata.labels".into(),
                "Invalid value: `selector` does not match template `labels`".into(),
            ));
        }
    }
    check_pod_spec(
        spec.and_then(|s| s.pointer("/template/spec")),
        "spec.template.spec",
        causes,
    );
    if let Some(old) = old {
        if old.pointer("/spec/selector") != selector {
            causes.push((
                "spec.selector".into(),
                "Invalid value: field is immutable".into(),
            ));
        }
    }
}

/// A ReplicationController: a plain-map selector (defaulted from the
/// template's labels) that the template's labels satisfy.
fn check_replication_controller(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    check_replicas(spec, causes);
    let selector = spec
        .and_then(|s| s.get("selector"))
        .and_then(Value::as_object)
        .filter(|s| !s.is_empty());
    let Some(selector) = selector else {
        causes.push(("spec.selector".into(), "Required value".into()));
        return;
    };
    let Some(template) = spec
        .and_then(|s| s.get("template"))
        .filter(|t| !t.is_null())
    else {
        causes.push(("spec.template".into(), "Required value".into()));
        return;
    };
    let template_labels = template
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    if !selector
        .iter()
        .all(|(k, v)| template_labels.and_then(|t| t.get(k)) == Some(v))
    {
        causes.push((
            "spec.template.metadata.labels".into(),
            "Invalid value: `selector` does not match template `labels`".into(),
        ));
    }
    check_pod_spec(template.get("spec"), "spec.template.spec", causes);
}

fn check_service(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = obj.get("spec");
    let kind = spec
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&kind) {
        causes.push((
            "spec.type".into(),
            format!("Unsupported value: \"{kind}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
    }
    let headless = spec
        .and_then(|s| s.get("clusterIP"))
        .and_then(Value::as_str)
        == Some("None");
    let ports = spec
        .and_then(|s| s.get("ports"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if ports.is_empty() && kind != "ExternalName" && !headless {
        causes.push(("spec.ports".into(), "Required value".into()));
    }
    for (i, p) in ports.iter().enumerate() {
        let port = p.get("port").and_then(Value::as_i64).unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push((
                format!("spec.ports[{i}].port"),
                format!("Invalid value: {port}: must be between 1 and 65535, inclusive"),
            ));
        }
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            causes.push((
                format!("spec.ports[{i}].protocol"),
                format!(
                    "Unsupported value: \"{proto}\": supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            ));
        }
        if ports.len() > 1
            && p.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            causes.push((format!("spec.ports[{i}].name"), "Required value".into()));
        }
    }
    if let Some(old) = old {
        let old_ip = old.pointer("/spec/clusterIP").and_then(Value::as_str);
        let new_ip = spec
            .and_then(|s| s.get("clusterIP"))
            .and_then(Value::as_str);
        if old_ip.is_some_and(|o| !o.is_empty())
            && new_ip.is_some_and(|n| !n.is_empty())
            && old_ip != new_ip
        {
            causes.push((
                "spec.clusterIP".into(),
                "Invalid value: field is immutable".into(),
            ));
        }
    }
}

fn check_endpoint_slice(obj: &Value, causes: &mut Vec<Cause>) {
    let address_type = obj.get("addressType").and_then(Value::as_str).unwrap_or("");
    if !["IPv4", "IPv6", "FQDN"].contains(&address_type) {
        causes.push((
            "addressType".into(),
            format!("Unsupported value: \"{address_type}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
        ));
    }
    let endpoints = obj.get("endpoints").and_then(Value::as_array);
    for (i, e) in endpoints.into_iter().flatten().enumerate() {
        if e.get("addresses")
            .and_then(Value::as_array)
            .is_none_or(|a| a.is_empty())
        {
            causes.push((format!("endpoints[{i}].addresses"), "Required value".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "busybox"}]}}}})
    }

    #[test]
    fn a_valid_deployment_passes() {
        let d = find("apps", "v1", "deployments").unwrap();
        assert_eq!(
            validate(d, &mut deployment(), None, FieldValidation::Strict).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn unknown_fields_follow_field_validation() {
        let d = find("apps", "v1", "deployments").unwrap();
        let mut obj = deployment();
        obj["spec"]["replica"] = json!(3);
        let err = validate(d, &mut obj, None, FieldValidation::Strict).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("unknown field \"spec.replica\""),
            "{}",
            err.message
        );
        let warnings = validate(d, &mut obj, None, FieldValidation::Warn).unwrap();
        assert_eq!(warnings, ["unknown field \"spec.replica\""]);
        // Warn and Ignore drop the field, as kube-apiserver does.
        assert!(obj["spec"].get("replica").is_none(), "{obj}");
        assert_eq!(obj["spec"]["replicas"], 2);
        obj["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = json!("x");
        assert!(validate(d, &mut obj, None, FieldValidation::Ignore)
            .unwrap()
            .is_empty());
        assert!(obj["spec"]["template"]["spec"]["containers"][0]
            .get("imagePolicy")
            .is_none());
    }

    #[test]
    fn wrong_types_are_bad_requests() {
        let d = find("apps", "v1", "deployments").unwrap();
        let mut obj = deployment();
        obj["spec"]["replicas"] = json!("two");
        let err = validate(d, &mut obj, None, FieldValidation::Warn).unwrap_err();
        assert_eq!(err.code, 400);
    }

    #[test]
    fn semantic_errors_are_invalid_with_causes() {
        let d = find("apps", "v1", "deployments").unwrap();
        let mut obj = deployment();
        obj["metadata"]["name"] = json!("Web_1");
        obj["spec"]["template"]["metadata"]["labels"]["app"] = json!("other");
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = json!("");
        let err = validate(d, &mut obj, None, FieldValidation::Warn).unwrap_err();
        assert_eq!(err.code, 422);
        let fields: Vec<&str> = err.details.as_ref().unwrap()["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "spec.template.metadata.labels",
                "spec.template.spec.containers[0].image"
            ]
        );
    }

    #[test]
    fn immutable_fields_stay() {
        let d = find("apps", "v1", "deployments").unwrap();
        let old = deployment();
        let mut new = deployment();
        new["spec"]["selector"]["matchLabels"]["tier"] = json!("x");
        new["spec"]["template"]["metadata"]["labels"]["tier"] = json!("x");
        let err = validate(d, &mut new, Some(&old), FieldValidation::Warn).unwrap_err();
        assert!(
            err.message
                .contains("spec.selector: Invalid value: field is immutable"),
            "{}",
            err.message
        );

        let s = find("", "v1", "services").unwrap();
        let old = json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.5", "ports": [{"port": 80}]}});
        let mut new = json!({"metadata": {"name": "a"}, "spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 80}]}});
        assert_eq!(
            validate(s, &mut new, Some(&old), FieldValidation::Warn)
                .unwrap_err()
                .code,
            422
        );
    }

    #[test]
    fn names_and_labels() {
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("A"));
        assert!(!is_dns_label("-a"));
        assert!(is_label_key("app.kubernetes.io/name"));
        assert!(!is_label_key("a/b/c"));
        assert!(is_label_value(""));
        assert!(!is_label_value("-x"));
    }
}
