//! OpenAPI v3: the index at `/openapi/v3` and one document per group
//! version, with the kinds' schemas (from k8s-openapi) and the operations.
//!
//! kubectl reads these to learn that the server validates fields itself
//! (a PATCH operation tagged with the kind that takes `fieldValidation`);
//! it then sends `fieldValidation=Strict` instead of validating on the
//! client. `kubectl explain` reads the schemas.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::api::{apps, coordination, core, discovery};
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use crate::resources::{self, Resource, RESOURCES};

/// Path of a group version's document, without the leading `/openapi/v3/`.
fn doc_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every served group version's document path.
fn doc_paths() -> Vec<(String, &'static str, &'static str)> {
    let mut paths = vec![(doc_path("", "v1"), "", "v1")];
    for (g, v) in resources::groups() {
        paths.push((doc_path(g, v), g, v));
    }
    paths
}

/// `/openapi/v3`.
pub(super) fn index() -> Value {
    let paths: Map<String, Value> = doc_paths()
        .into_iter()
        .map(|(path, _, _)| {
            let url = format!("/openapi/v3/{path}?hash={}", hash());
            (path, json!({"serverRelativeURL": url}))
        })
        .collect();
    json!({"paths": paths})
}

/// A stable hash of the documents (they change only with the binary).
fn hash() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The document at `/openapi/v3/<path>`, if served.
pub(super) fn document(path: &str) -> Option<&'static Value> {
    static DOCS: OnceLock<BTreeMap<String, Value>> = OnceLock::new();
    DOCS.get_or_init(|| {
        doc_paths()
            .into_iter()
            .map(|(path, g, v)| (path, build(g, v)))
            .collect()
    })
    .get(path)
}

fn schema_name(kind: &str) -> String {
    match kind {
        "EndpointSlice" => "io.k8s.api.discovery.v1.EndpointSlice".into(),
        "ReplicaSet" | "Deployment" => format!("io.k8s.api.apps.v1.{kind}"),
        "Lease" => "io.k8s.api.coordination.v1.Lease".into(),
        _ => format!("io.k8s.api.core.v1.{kind}"),
    }
}

fn add_schema(generator: &mut SchemaGenerator, kind: &str) {
    match kind {
        "Namespace" => drop(generator.subschema_for::<core::v1::Namespace>()),
        "Node" => drop(generator.subschema_for::<core::v1::Node>()),
        "Pod" => drop(generator.subschema_for::<core::v1::Pod>()),
        "Service" => drop(generator.subschema_for::<core::v1::Service>()),
        "Endpoints" => drop(generator.subschema_for::<core::v1::Endpoints>()),
        "Event" => drop(generator.subschema_for::<core::v1::Event>()),
        "ConfigMap" => drop(generator.subschema_for::<core::v1::ConfigMap>()),
        "EndpointSlice" => drop(generator.subschema_for::<discovery::v1::EndpointSlice>()),
        "ReplicationController" => {
            drop(generator.subschema_for::<core::v1::ReplicationController>())
        }
        "ReplicaSet" => drop(generator.subschema_for::<apps::v1::ReplicaSet>()),
        "Deployment" => drop(generator.subschema_for::<apps::v1::Deployment>()),
        "Lease" => drop(generator.subschema_for::<coordination::v1::Lease>()),
        _ => {}
    }
}

fn build(group: &str, version: &str) -> Value {
    let mut generator = SchemaSettings::openapi3().into_generator();
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    let mut paths = Map::new();
    for r in &served {
        add_schema(&mut generator, r.kind);
        operations(r, &mut paths);
    }
    let mut schemas = generator.take_definitions(true);
    for r in &served {
        if let Some(Value::Object(schema)) = schemas.get_mut(&schema_name(r.kind)) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": r.group, "version": r.version, "kind": r.kind}]),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBERNETES_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}

fn query(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "uniqueItems": true}})
}

fn operations(r: &Resource, paths: &mut Map<String, Value>) {
    let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let collection = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let object = format!("{collection}/{{name}}");
    let schema_ref = json!({"$ref": format!("#/components/schemas/{}", schema_name(r.kind))});
    let body = json!({"content": {"application/json": {"schema": schema_ref}}});
    let response = json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema_ref}}}});
    let write_params = [
        query("dryRun"),
        query("fieldManager"),
        query("fieldValidation"),
    ];
    let op = |action: &str, params: &[Value], with_body: bool| {
        let mut op = json!({
            "operationId": format!("{action}{}", r.kind),
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": response,
        });
        if with_body {
            op["requestBody"] = body.clone();
        }
        op
    };
    let mut scope_params = Vec::new();
    if r.namespaced {
        scope_params.push(path_param("namespace"));
    }
    let mut object_params = vec![path_param("name")];
    object_params.extend(scope_params.iter().cloned());

    let mut patch = op("patch", &write_params, false);
    patch["requestBody"] = json!({"content": {
        "application/json-patch+json": {"schema": {"type": "object"}},
        "application/merge-patch+json": {"schema": {"type": "object"}},
    }});
    paths.insert(
        collection,
        json!({
            "parameters": scope_params,
            "get": op("list", &[query("labelSelector"), query("fieldSelector"), query("watch"), query("resourceVersion")], false),
            "post": op("post", &write_params, true),
        }),
    );
    paths.insert(
        object,
        json!({
            "parameters": object_params,
            "get": op("get", &[], false),
            "put": op("put", &write_params, true),
            "patch": patch,
            "delete": op(
                "delete",
                &[query("dryRun"), query("gracePeriodSeconds"), query("propagationPolicy")],
                false
            ),
        }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_lists_every_group_version() {
        let idx = index();
        let paths = idx["paths"].as_object().unwrap();
        for p in [
            "api/v1",
            "apis/apps/v1",
            "apis/discovery.k8s.io/v1",
            "apis/coordination.k8s.io/v1",
        ] {
            let url = paths[p]["serverRelativeURL"].as_str().unwrap();
            assert!(url.starts_with(&format!("/openapi/v3/{p}?hash=")), "{url}");
        }
    }

    #[test]
    fn patch_operations_accept_field_validation_and_name_their_kind() {
        let doc = document("apis/apps/v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        let params = patch["parameters"].as_array().unwrap();
        assert!(params
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        let schema = &doc["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            schema["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(schema["properties"]["spec"].is_object());
        assert!(document("apis/batch/v1").is_none());
    }
}
