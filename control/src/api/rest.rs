//! The HTTP layer of the resource endpoints: paths to targets, methods to
//! verbs, authorization, bodies and their limits, query options, and
//! responses (JSON or Table, warnings). What a verb does to the store is
//! the registry's ([`crate::registry`]).

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::{json_response, success_status, table, user_of, watch, Api};
use crate::auth::{self, Action, User};
use crate::error::ApiError;
use crate::node_restriction;
use crate::object;
use crate::patch::PatchType;
use crate::prepare;
use crate::registry::{Caller, DeleteOptions, Propagation, Target, WriteOptions, Written};
use crate::resources::{self, Resource};
use crate::selector::Selector;
use crate::store::StoreError;
use crate::validate::FieldValidation;

/// Largest request body accepted.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Parses the part of the path after `/api/v1/` or `/apis/<g>/<v>/`.
fn parse_target(group: &str, version: &str, rest: &str) -> Result<Target, ApiError> {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let not_found = || {
        let prefix = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        ApiError::no_route(&format!("{prefix}/{rest}"))
    };
    let namespaced_resource =
        |plural: &str| resources::find(group, version, plural).filter(|r| r.namespaced);
    let (namespace, tail) = match segments.as_slice() {
        ["namespaces", ns, plural, tail @ ..] if namespaced_resource(plural).is_some() => (
            Some((*ns).to_string()),
            std::iter::once(*plural)
                .chain(tail.iter().copied())
                .collect::<Vec<_>>(),
        ),
        other => (None, other.to_vec()),
    };
    let (plural, name, sub) = match tail.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(*name), None),
        [plural, name, sub] => (*plural, Some(*name), Some(*sub)),
        _ => return Err(not_found()),
    };
    let resource = resources::find(group, version, plural).ok_or_else(not_found)?;
    if let Some(sub) = sub {
        if !resource.subresources.contains(&sub) {
            return Err(not_found());
        }
    }
    Ok(Target {
        resource,
        namespace,
        name: name.map(String::from),
        sub: sub.map(String::from),
    })
}

/// The verb of a request, as authorization and metrics name it.
fn verb(
    method: &Method,
    target: &Target,
    query: &HashMap<String, String>,
) -> Result<&'static str, ApiError> {
    let watching = matches!(query.get("watch").map(String::as_str), Some("true" | "1"));
    let not_allowed = || {
        ApiError::method_not_allowed(format!(
            "{method} is not supported on {}/{}",
            target.resource.plural,
            target.sub.as_deref().unwrap_or("")
        ))
    };
    match (method.as_str(), target.sub.as_deref()) {
        ("DELETE", Some(_)) | ("GET" | "PUT" | "PATCH", Some("binding")) => {
            return Err(not_allowed())
        }
        ("POST", Some(sub)) if sub != "binding" => return Err(not_allowed()),
        _ => {}
    }
    Ok(match (method.as_str(), target.name.is_some()) {
        ("GET", false) if watching => "watch",
        ("GET", false) => "list",
        ("GET", true) if watching => "watch",
        ("GET", true) => "get",
        ("POST", false) => "create",
        ("POST", true) if target.sub.as_deref() == Some("binding") => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        (m, _) => {
            return Err(ApiError::method_not_allowed(format!(
                "{m} is not supported on {}",
                target.resource.plural
            )))
        }
    })
}

/// Entry point of every resource request.
pub(super) async fn handle(
    api: &Api,
    group: &str,
    version: &str,
    rest: &str,
    req: Request,
) -> Response {
    let started = Instant::now();
    let mut label = ("unknown", String::from("unknown"));
    let response = match handle_inner(api, group, version, rest, req, &mut label).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    };
    api.0.metrics.observe(
        label.0,
        &label.1,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

async fn handle_inner(
    api: &Api,
    group: &str,
    version: &str,
    rest: &str,
    req: Request,
    label: &mut (&'static str, String),
) -> Result<Response, ApiError> {
    let user = user_of(&req)?;
    let target = parse_target(group, version, rest)?;
    let query: HashMap<String, String> = Query::try_from_uri(req.uri())
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?;
    let method = req.method().clone();
    let verb = verb(&method, &target, &query)?;
    *label = (
        verb,
        match &target.sub {
            Some(sub) => format!("{}/{sub}", target.resource.plural),
            None => target.resource.plural.to_string(),
        },
    );
    let headers = req.headers().clone();
    if matches!(verb, "create" | "update") {
        check_json_body(&headers)?;
    }
    let body = read_body(req, &headers).await?;
    // A create names its object in the body.
    let created_name = (verb == "create" && target.name.is_none())
        .then(|| serde_json::from_slice::<Value>(&body).ok())
        .flatten()
        .and_then(|obj| object::name(&obj).map(String::from));
    authorize(api, &user, verb, &target, &query, created_name.as_deref()).await?;
    let registry = &api.0.registry;
    let caller = Caller {
        user: &user,
        target: &target,
    };
    let table = wants_table(&headers);
    let respond = |code, obj: &Value| respond(code, target.resource, obj, table);
    match verb {
        "get" => {
            let obj = registry.get(&target).await?;
            Ok(if target.sub.as_deref() == Some("scale") {
                json_response(StatusCode::OK, &obj)
            } else {
                respond(StatusCode::OK, &obj)
            })
        }
        "list" => {
            let (labels, fields) = selectors(&query)?;
            let (items, revision) = registry.list(&target, &labels, &fields).await?;
            Ok(list_response(&target, items, revision, table))
        }
        "watch" => watch::serve(api, &target, &query, table).await,
        "create" if target.sub.as_deref() == Some("binding") => {
            registry.bind(&target, &body).await?;
            Ok(json_response(StatusCode::CREATED, &success_status()))
        }
        "create" => {
            let written = registry
                .create(caller, &body, write_options(&query)?)
                .await?;
            Ok(written_response(StatusCode::CREATED, written, respond))
        }
        "update" | "patch" => {
            let options = write_options(&query)?;
            let written = if verb == "update" {
                registry.update(caller, &body, options).await?
            } else {
                let content_type = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let kind = PatchType::from_content_type(content_type)?;
                registry.patch(caller, &body, kind, options).await?
            };
            if target.sub.as_deref() == Some("scale") {
                return Ok(with_warnings(
                    json_response(StatusCode::OK, &written.object),
                    &written.warnings,
                ));
            }
            Ok(written_response(StatusCode::OK, written, respond))
        }
        "delete" => {
            let options = delete_options(&query, &body)?;
            let deleted = registry.delete(&target, &options).await?;
            Ok(respond(StatusCode::OK, &deleted))
        }
        "deletecollection" => {
            let (labels, fields) = selectors(&query)?;
            let options = delete_options(&query, &[])?;
            let (items, revision) = registry
                .delete_collection(&target, &labels, &fields, &options)
                .await?;
            Ok(list_response(&target, items, revision, false))
        }
        _ => Err(ApiError::method_not_allowed(verb)),
    }
}

/// The object as JSON, or as a Table when the client asked for one.
fn respond(code: StatusCode, resource: &Resource, obj: &Value, table: bool) -> Response {
    if table {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        json_response(
            code,
            &table::table(resource.kind, std::slice::from_ref(obj), rv),
        )
    } else {
        json_response(code, obj)
    }
}

fn written_response(
    code: StatusCode,
    written: Written,
    respond: impl Fn(StatusCode, &Value) -> Response,
) -> Response {
    with_warnings(respond(code, &written.object), &written.warnings)
}

/// A list of `items` read at `revision` (as a Table when asked).
fn list_response(target: &Target, items: Vec<Value>, revision: u64, table: bool) -> Response {
    let rv = revision.to_string();
    if table {
        return json_response(
            StatusCode::OK,
            &table::table(target.resource.kind, &items, &rv),
        );
    }
    json_response(
        StatusCode::OK,
        &json!({
            "apiVersion": target.resource.api_version(),
            "kind": target.resource.list_kind(),
            "metadata": {"resourceVersion": rv},
            "items": items,
        }),
    )
}

/// `labelSelector` and `fieldSelector`.
fn selectors(query: &HashMap<String, String>) -> Result<(Selector, Selector), ApiError> {
    let get = |name: &str| query.get(name).map_or("", String::as_str);
    Ok((
        Selector::labels(get("labelSelector"))?,
        Selector::fields(get("fieldSelector"))?,
    ))
}

/// `dryRun` and `fieldValidation`.
fn write_options(query: &HashMap<String, String>) -> Result<WriteOptions, ApiError> {
    Ok(WriteOptions {
        fields: FieldValidation::parse(query.get("fieldValidation").map(String::as_str))?,
        dry_run: dry_run(query)?,
    })
}

/// The query's `dryRun`, `gracePeriodSeconds` and `propagationPolicy`,
/// and a DeleteOptions body's preconditions, grace period and
/// propagation policy (the query's wins).
fn delete_options(query: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let options: Value = if body.is_empty() {
        json!({})
    } else {
        prepare::parse_body(body)?
    };
    let text = |path: &str| {
        options
            .pointer(path)
            .and_then(Value::as_str)
            .map(String::from)
    };
    let grace = query
        .get("gracePeriodSeconds")
        .map(|g| g.parse::<i64>())
        .or_else(|| {
            options
                .get("gracePeriodSeconds")
                .and_then(Value::as_i64)
                .map(Ok)
        })
        .transpose()
        .map_err(|_| ApiError::bad_request("gracePeriodSeconds must be an integer"))?;
    let propagation = match query
        .get("propagationPolicy")
        .cloned()
        .or_else(|| text("/propagationPolicy"))
    {
        Some(policy) => Propagation::parse(&policy)?,
        // The older form: orphanDependents=true is Orphan.
        None => match query
            .get("orphanDependents")
            .map(|o| o == "true")
            .or_else(|| options.get("orphanDependents").and_then(Value::as_bool))
        {
            Some(true) => Propagation::Orphan,
            _ => Propagation::Background,
        },
    };
    Ok(DeleteOptions {
        dry_run: dry_run(query)?,
        grace,
        uid: text("/preconditions/uid"),
        resource_version: text("/preconditions/resourceVersion"),
        propagation,
    })
}

async fn authorize(
    api: &Api,
    user: &User,
    verb: &str,
    target: &Target,
    query: &HashMap<String, String>,
    created_name: Option<&str>,
) -> Result<(), ApiError> {
    let used_by_bound_pod = match user {
        User::Node { node }
            if target.resource.plural == "configmaps"
                && matches!(verb, "get" | "list" | "watch") =>
        {
            let name = target.name.as_deref().or_else(|| {
                query
                    .get("fieldSelector")
                    .and_then(|s| node_restriction::selected_name(s))
            });
            match (name, target.namespace.as_deref()) {
                (Some(name), Some(namespace)) => used_by_pod_on(api, node, namespace, name).await?,
                _ => false,
            }
        }
        _ => false,
    };
    let mut bound_node = None;
    if matches!(user, User::Node { .. })
        && target.resource.plural == "pods"
        && !matches!(verb, "get" | "list" | "watch")
    {
        if let Some(record) = api
            .0
            .registry
            .store()
            .get(&target.key())
            .await
            .map_err(|e| store_error(target, e))?
        {
            let pod = object::from_record(&record)?;
            bound_node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .map(String::from);
        }
    }
    auth::authorize(
        user,
        &Action {
            verb,
            resource: target.resource.plural,
            subresource: target.sub.as_deref(),
            namespace: target.namespace.as_deref(),
            name: target.name.as_deref().or(created_name),
            bound_node: bound_node.as_deref(),
            used_by_bound_pod,
        },
    )
}

/// Whether a pod in `namespace` bound to `node` uses the ConfigMap `name`.
async fn used_by_pod_on(
    api: &Api,
    node: &str,
    namespace: &str,
    name: &str,
) -> Result<bool, ApiError> {
    let prefix = format!("/registry/pods/{namespace}/");
    let (pods, _) = api
        .0
        .registry
        .store()
        .list(&prefix)
        .await
        .map_err(|e| ApiError::from_store("pods", "", e))?;
    for record in &pods {
        let pod = object::from_record(record)?;
        if pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
            && node_restriction::pod_uses_config_map(&pod, name)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the client asked for a Table (kubectl's human-readable output).
pub(super) fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| {
            accept
                .split(',')
                .next()
                .is_some_and(|first| first.contains("as=Table"))
        })
}

/// The request body, refused with 413 past [`MAX_BODY`] (from its
/// Content-Length before reading anything, else while reading).
async fn read_body(req: Request, headers: &HeaderMap) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::too_large(format_args!("limit is {MAX_BODY}"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                too_large()
            } else {
                ApiError::bad_request(format!("cannot read the request body: {e}"))
            }
        })
}

/// Objects are read as JSON only: another encoding (kubectl's typed
/// commands send protobuf first) gets 415, on which clients fall back to JSON.
fn check_json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    match media {
        "" | "application/json" | "*/*" => Ok(()),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn store_error(target: &Target, e: StoreError) -> ApiError {
    ApiError::from_store(target.resource.plural, target.name(), e)
}

fn dry_run(query: &HashMap<String, String>) -> Result<bool, ApiError> {
    match query.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun must be All, not {other:?}"
        ))),
    }
}

fn with_warnings(mut response: Response, warnings: &[String]) -> Response {
    for w in warnings {
        if let Ok(value) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "'"))) {
            response.headers_mut().append("warning", value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_targets() {
        let t = parse_target("", "v1", "namespaces/prod/pods/web/status").unwrap();
        assert_eq!(
            (
                t.resource.plural,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("pods", Some("prod"), Some("web"), Some("status"))
        );
        let t = parse_target("", "v1", "namespaces/prod").unwrap();
        assert_eq!(
            (t.resource.plural, t.name.as_deref()),
            ("namespaces", Some("prod"))
        );
        let t = parse_target("", "v1", "namespaces/prod/status").unwrap();
        assert_eq!(
            (t.resource.plural, t.sub.as_deref()),
            ("namespaces", Some("status"))
        );
        let t = parse_target("", "v1", "pods").unwrap();
        assert_eq!((t.resource.plural, t.namespace), ("pods", None));
        let t = parse_target("apps", "v1", "namespaces/d/deployments/web/scale").unwrap();
        assert_eq!(t.sub.as_deref(), Some("scale"));
        assert_eq!(parse_target("", "v1", "secrets").unwrap_err().code, 404);
        assert_eq!(
            parse_target("", "v1", "namespaces/d/pods/a/exec")
                .unwrap_err()
                .code,
            404
        );
    }

    #[test]
    fn delete_options_carry_the_propagation_policy() {
        let query = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let o = delete_options(&query(&[]), b"").unwrap();
        assert_eq!(o.propagation, Propagation::Background);
        let o = delete_options(&query(&[("propagationPolicy", "Foreground")]), b"").unwrap();
        assert_eq!(o.propagation, Propagation::Foreground);
        let o = delete_options(
            &query(&[]),
            br#"{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Orphan"}"#,
        )
        .unwrap();
        assert_eq!(o.propagation, Propagation::Orphan);
        let o = delete_options(&query(&[("orphanDependents", "true")]), b"").unwrap();
        assert_eq!(o.propagation, Propagation::Orphan);
        let e = delete_options(&query(&[("propagationPolicy", "Sideways")]), b"").unwrap_err();
        assert_eq!(e.code, 422);
        assert!(
            e.message.contains("Unsupported value: \"Sideways\""),
            "{}",
            e.message
        );
    }

    #[test]
    fn tables_are_negotiated_from_the_first_accept_choice() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(wants_table(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_table(&h));
    }
}
