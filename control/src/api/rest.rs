//! The resource endpoints: get, list, watch, create, update, patch, delete
//! and deletecollection, with Kubernetes semantics, and the `status`,
//! `scale` and `binding` subresources.

use std::collections::HashMap;
use std::time::Instant;

use axum::extract::{Query, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::{json_response, success_status, table, user_of, watch, Api};
use crate::alloc::Claims;
use crate::auth::{self, Action, User};
use crate::defaults;
use crate::error::ApiError;
use crate::node_restriction;
use crate::object;
use crate::patch::{self, PatchType};
use crate::prepare;
use crate::resources::{self, Resource};
use crate::selector::Selector;
use crate::store::{Record, StoreError};
use crate::validate::{validate, FieldValidation};

/// Largest request body accepted.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Attempts of a patch or scale that races other writers.
const PATCH_ATTEMPTS: usize = 5;
/// Namespaces that exist in every cluster and may not be deleted.
const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];

/// What a request addresses.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) resource: &'static Resource,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) sub: Option<String>,
}

impl Target {
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }

    fn key(&self) -> String {
        self.resource.key(self.namespace.as_deref(), self.name())
    }

    pub(super) fn prefix(&self) -> String {
        self.resource.scope_prefix(self.namespace.as_deref())
    }
}

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
    let ctx = Ctx {
        api,
        user: &user,
        target: &target,
        query: &query,
        headers: &headers,
    };
    match verb {
        "get" => ctx.get().await,
        "list" => ctx.list().await,
        "watch" => watch::serve(api, &target, &query, wants_table(&headers)).await,
        "create" if target.sub.as_deref() == Some("binding") => ctx.bind(&body).await,
        "create" => ctx.create(&body).await,
        "update" => ctx.update(&body).await,
        "patch" => ctx.patch(&body).await,
        "delete" => ctx.delete(&body).await,
        "deletecollection" => ctx.delete_collection().await,
        _ => Err(ApiError::method_not_allowed(verb)),
    }
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
            .store
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
        .store
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

/// Who owns allocations made for an object.
fn owner(target: &Target, name: &str) -> String {
    match &target.namespace {
        Some(ns) if target.resource.namespaced => format!("{}/{ns}/{name}", target.resource.plural),
        _ => format!("{}/{name}", target.resource.plural),
    }
}

/// One request's context.
struct Ctx<'a> {
    api: &'a Api,
    user: &'a User,
    target: &'a Target,
    query: &'a HashMap<String, String>,
    headers: &'a HeaderMap,
}

impl Ctx<'_> {
    fn resource(&self) -> &'static Resource {
        self.target.resource
    }

    /// Admission after defaults and before the write: what a node's
    /// credentials may change (NodeRestriction), and no Node claiming
    /// another's overlay identity. `old` is `None` for a create.
    async fn admit(&self, old: Option<&Value>, new: &Value) -> Result<(), ApiError> {
        let plural = self.resource().plural;
        if let User::Node { node } = self.user {
            match (plural, self.target.sub.as_deref(), old) {
                // Status writes carry labels too.
                ("nodes", _, _) => node_restriction::admit_node_object(node, old, new)?,
                ("pods", Some("status"), Some(old)) => {
                    node_restriction::admit_pod_status(node, old, new)?
                }
                _ => {}
            }
        }
        let identity_changed = || {
            node_restriction::OVERLAY_IDENTITY_ANNOTATIONS
                .iter()
                .any(|k| {
                    let path = format!("/metadata/annotations/{}", k.replace('/', "~1"));
                    old.and_then(|o| o.pointer(&path)) != new.pointer(&path)
                })
        };
        if plural == "nodes" && identity_changed() {
            let (records, _) = self
                .api
                .0
                .store
                .list("/registry/nodes/")
                .await
                .map_err(|e| store_error(self.target, e))?;
            let nodes: Vec<(String, Value)> = records
                .iter()
                .map(|r| {
                    let obj = object::from_record(r)?;
                    Ok((object::name(&obj).unwrap_or_default().to_string(), obj))
                })
                .collect::<Result<_, ApiError>>()?;
            if let Some((annotation, value, other)) = node_restriction::overlay_identity_clash(
                new,
                nodes.iter().map(|(n, o)| (n.as_str(), o)),
            ) {
                return Err(ApiError::invalid(
                    "Node",
                    object::name(new).unwrap_or_default(),
                    &[(
                        format!("metadata.annotations[{annotation}]"),
                        format!(
                            "Duplicate value: \"{value}\": already claimed by node \"{other}\""
                        ),
                    )],
                ));
            }
        }
        Ok(())
    }

    async fn read(&self) -> Result<(Record, Value), ApiError> {
        let record = self
            .api
            .0
            .store
            .get(&self.target.key())
            .await
            .map_err(|e| store_error(self.target, e))?
            .ok_or_else(|| ApiError::not_found(self.resource().plural, self.target.name()))?;
        let obj = object::from_record(&record)?;
        Ok((record, obj))
    }

    fn respond(&self, code: StatusCode, obj: &Value) -> Response {
        if wants_table(self.headers) {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            json_response(
                code,
                &table::table(self.resource().kind, std::slice::from_ref(obj), rv),
            )
        } else {
            json_response(code, obj)
        }
    }

    async fn get(&self) -> Result<Response, ApiError> {
        let (_, obj) = self.read().await?;
        if self.target.sub.as_deref() == Some("scale") {
            return Ok(json_response(StatusCode::OK, &scale_of(&obj)));
        }
        Ok(self.respond(StatusCode::OK, &obj))
    }

    async fn list(&self) -> Result<Response, ApiError> {
        let labels = Selector::labels(self.query.get("labelSelector").map_or("", String::as_str))?;
        let fields = Selector::fields(self.query.get("fieldSelector").map_or("", String::as_str))?;
        let (records, revision) = self
            .api
            .0
            .store
            .list(&self.target.prefix())
            .await
            .map_err(|e| store_error(self.target, e))?;
        let mut items = Vec::with_capacity(records.len());
        for record in &records {
            let obj = object::from_record(record)?;
            if labels.matches_labels(&obj) && fields.matches_fields(&obj) {
                items.push(obj);
            }
        }
        let rv = revision.to_string();
        if wants_table(self.headers) {
            return Ok(json_response(
                StatusCode::OK,
                &table::table(self.resource().kind, &items, &rv),
            ));
        }
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": self.resource().api_version(),
                "kind": self.resource().list_kind(),
                "metadata": {"resourceVersion": rv},
                "items": items,
            }),
        ))
    }

    async fn namespace_must_exist(&self, obj: &Value) -> Result<(), ApiError> {
        if !self.resource().namespaced {
            return Ok(());
        }
        let ns = object::namespace(obj).unwrap_or("default");
        let record = self
            .api
            .0
            .store
            .get(&format!("/registry/namespaces/{ns}"))
            .await
            .map_err(|e| store_error(self.target, e))?;
        match record {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(r)
                if object::from_record(&r)?
                    .pointer("/metadata/deletionTimestamp")
                    .is_some() =>
            {
                Err(ApiError::forbidden(format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    async fn create(&self, body: &Bytes) -> Result<Response, ApiError> {
        let resource = self.resource();
        let fields = FieldValidation::parse(self.query.get("fieldValidation").map(String::as_str))?;
        let dry = dry_run(self.query)?;
        let (mut obj, warnings) =
            prepare::for_create(resource, body, self.target.namespace.as_deref(), fields)?;
        self.admit(None, &obj).await?;
        self.namespace_must_exist(&obj).await?;
        let name = object::name(&obj).unwrap_or_default().to_string();
        let claims = self.allocate(&mut obj, None, &name).await?;
        if dry {
            self.api.0.alloc.release(claims).await;
            return Ok(with_warnings(
                self.respond(StatusCode::CREATED, &obj),
                &warnings,
            ));
        }
        let key = resource.key(object::namespace(&obj), &name);
        let stored = self
            .api
            .0
            .store
            .create(&key, object::to_stored(&obj)?)
            .await;
        let record = match stored {
            Ok(record) => record,
            Err(e) => {
                self.api.0.alloc.release(claims).await;
                return Err(ApiError::from_store(resource.plural, &name, e));
            }
        };
        let created = object::from_record(&record)?;
        Ok(with_warnings(
            self.respond(StatusCode::CREATED, &created),
            &warnings,
        ))
    }

    /// Allocates what the API server owns for Services and Nodes.
    async fn allocate(
        &self,
        obj: &mut Value,
        old: Option<&Value>,
        name: &str,
    ) -> Result<Claims, ApiError> {
        if self.target.sub.is_some() {
            return Ok(Claims::default());
        }
        let owner = owner(self.target, name);
        match self.resource().kind {
            "Service" => self.api.0.alloc.service(obj, old, &owner).await,
            "Node" => self.api.0.alloc.node(obj, old, &owner).await,
            _ => Ok(Claims::default()),
        }
    }

    async fn update(&self, body: &Bytes) -> Result<Response, ApiError> {
        let new = prepare::parse_body(body)?;
        if self.target.sub.as_deref() == Some("scale") {
            return self.write_scale(|_| Ok(new.clone())).await;
        }
        let expected = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|rv| !rv.is_empty())
            .map(object::parse_resource_version)
            .transpose()?;
        if let Some(body_name) = object::name(&new) {
            if body_name != self.target.name() {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({})",
                    self.target.name()
                )));
            }
        }
        let (record, old) = self.read().await?;
        self.write(&record, &old, new, expected).await
    }

    /// Stores `new` over `old` (read at `record`), `expected` being the
    /// client's resourceVersion if it sent one.
    async fn write(
        &self,
        record: &Record,
        old: &Value,
        mut new: Value,
        expected: Option<u64>,
    ) -> Result<Response, ApiError> {
        let resource = self.resource();
        object::check_type(resource, &mut new)?;
        object::check_namespace(resource, &mut new, self.target.namespace.as_deref())?;
        object::prepare_update(resource, old, &mut new, self.target.sub.as_deref())?;
        self.admit(Some(old), &new).await?;
        let fields = FieldValidation::parse(self.query.get("fieldValidation").map(String::as_str))?;
        let dry = dry_run(self.query)?;
        let warnings = validate(resource, &mut new, Some(old), fields)?;
        if let Some(expected) = expected {
            if expected != record.mod_revision {
                return Err(ApiError::conflict(resource.plural, self.target.name()));
            }
        }
        let claims = self
            .allocate(&mut new, Some(old), self.target.name())
            .await?;
        if dry {
            self.api.0.alloc.release(claims).await;
            return Ok(with_warnings(self.respond(StatusCode::OK, &new), &warnings));
        }
        // An object being deleted goes once its last finalizer is removed.
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(|f| f.is_empty())
            && !awaits_node(resource, &new);
        if finalized {
            self.api.0.alloc.release(claims).await;
            let deleted = self.remove(record, old).await?;
            return Ok(with_warnings(
                self.respond(StatusCode::OK, &deleted),
                &warnings,
            ));
        }
        let stored = object::to_stored(&new)?;
        if *stored == *record.value {
            // Nothing changed: no write, no new resourceVersion.
            return Ok(with_warnings(self.respond(StatusCode::OK, old), &warnings));
        }
        let result = self
            .api
            .0
            .store
            .update(&record.key, stored, Some(record.mod_revision))
            .await;
        match result {
            Ok(r) => {
                // Only now that the new object is stored may what the old
                // one held (and the new one does not) go back.
                if resource.kind == "Service" && self.target.sub.is_none() {
                    self.api.0.alloc.release_replaced(old, &new).await;
                }
                Ok(with_warnings(
                    self.respond(StatusCode::OK, &object::from_record(&r)?),
                    &warnings,
                ))
            }
            Err(e) => {
                self.api.0.alloc.release(claims).await;
                Err(store_error(self.target, e))
            }
        }
    }

    async fn patch(&self, body: &Bytes) -> Result<Response, ApiError> {
        let content_type = self
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let kind = PatchType::from_content_type(content_type)?;
        if self.target.sub.as_deref() == Some("scale") {
            return self
                .write_scale(|scale| patch::apply(scale, body, kind))
                .await;
        }
        for _ in 0..PATCH_ATTEMPTS {
            let (record, old) = self.read().await?;
            let new = patch::apply(&old, body, kind)?;
            // A resourceVersion in the patch is a precondition; otherwise
            // the patch applies to whatever is current (retried on races).
            let sent_rv = new
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|rv| {
                    *rv != old
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                })
                .map(object::parse_resource_version)
                .transpose()?;
            match self.write(&record, &old, new, sent_rv).await {
                Err(e) if e.reason == "Conflict" && sent_rv.is_none() => continue,
                other => return other,
            }
        }
        Err(ApiError::conflict(
            self.resource().plural,
            self.target.name(),
        ))
    }

    /// Reads the scale of a Deployment or ReplicaSet, lets `change` produce
    /// the new Scale, and writes its replicas into the object.
    async fn write_scale(
        &self,
        change: impl Fn(&Value) -> Result<Value, ApiError>,
    ) -> Result<Response, ApiError> {
        for _ in 0..PATCH_ATTEMPTS {
            let (record, old) = self.read().await?;
            let scale = scale_of(&old);
            let new_scale = change(&scale)?;
            let replicas = new_scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::bad_request("the Scale has no spec.replicas"))?;
            let expected = new_scale
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .filter(|rv| !rv.is_empty())
                .map(object::parse_resource_version)
                .transpose()?;
            if let Some(expected) = expected {
                if expected != record.mod_revision {
                    return Err(ApiError::conflict(
                        self.resource().plural,
                        self.target.name(),
                    ));
                }
            }
            let mut new = old.clone();
            new["spec"]["replicas"] = json!(replicas);
            let target = Target {
                resource: self.target.resource,
                namespace: self.target.namespace.clone(),
                name: self.target.name.clone(),
                sub: None,
            };
            let ctx = Ctx {
                target: &target,
                ..*self
            };
            match ctx.write(&record, &old, new, None).await {
                Ok(_) => {
                    let (_, current) = ctx.read().await?;
                    return Ok(json_response(StatusCode::OK, &scale_of(&current)));
                }
                Err(e) if e.reason == "Conflict" && expected.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(
            self.resource().plural,
            self.target.name(),
        ))
    }

    /// `POST pods/<name>/binding`: assigns the pod to a node.
    async fn bind(&self, body: &Bytes) -> Result<Response, ApiError> {
        let binding = prepare::parse_body(body)?;
        let node = binding
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::invalid(
                    "Binding",
                    self.target.name(),
                    &[("target.name".into(), "Required value".into())],
                )
            })?
            .to_string();
        let (record, old) = self.read().await?;
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::conflict_because(format!(
                "pod {} is being deleted and cannot be bound",
                self.target.name()
            )));
        }
        if let Some(current) = old
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::conflict_because(format!(
                "pod {} is already assigned to node \"{current}\"",
                self.target.name()
            )));
        }
        let mut new = old.clone();
        new["spec"]["nodeName"] = json!(node);
        let stored = object::to_stored(&new)?;
        self.api
            .0
            .store
            .update(&record.key, stored, Some(record.mod_revision))
            .await
            .map_err(|e| store_error(self.target, e))?;
        Ok(json_response(StatusCode::CREATED, &success_status()))
    }

    async fn delete(&self, body: &Bytes) -> Result<Response, ApiError> {
        let options: Value = if body.is_empty() {
            json!({})
        } else {
            prepare::parse_body(body)?
        };
        let (record, old) = self.read().await?;
        if let Some(uid) = options
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
        {
            if old.pointer("/metadata/uid").and_then(Value::as_str) != Some(uid) {
                return Err(ApiError::conflict(
                    self.resource().plural,
                    self.target.name(),
                ));
            }
        }
        if let Some(rv) = options
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
        {
            if object::parse_resource_version(rv)? != record.mod_revision {
                return Err(ApiError::conflict(
                    self.resource().plural,
                    self.target.name(),
                ));
            }
        }
        if self.resource().kind == "Namespace" && SYSTEM_NAMESPACES.contains(&self.target.name()) {
            return Err(ApiError::forbidden(format!(
                "namespace \"{}\" is a system namespace and may not be deleted",
                self.target.name()
            )));
        }
        let grace = self
            .query
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
        if dry_run(self.query)? {
            return Ok(self.respond(StatusCode::OK, &old));
        }
        let has_finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let graceful = awaits_node(self.resource(), &old) && grace != Some(0);
        if has_finalizers || graceful {
            return self.mark_deleted(&record, old, grace).await;
        }
        let deleted = self.remove(&record, &old).await?;
        Ok(self.respond(StatusCode::OK, &deleted))
    }

    /// Sets deletionTimestamp (and a pod's grace period) instead of
    /// removing: finalizers or the pod's node finish the delete.
    async fn mark_deleted(
        &self,
        record: &Record,
        old: Value,
        grace: Option<i64>,
    ) -> Result<Response, ApiError> {
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(self.respond(StatusCode::OK, &old));
        }
        let mut new = old;
        let mut deadline = jiff::Timestamp::now();
        if self.resource().kind == "Pod" {
            let grace = grace
                .or_else(|| {
                    new.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(defaults::GRACE_SECONDS)
                .max(1);
            new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            deadline = deadline
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .unwrap_or(deadline);
        }
        new["metadata"]["deletionTimestamp"] =
            json!(deadline.strftime("%Y-%m-%dT%H:%M:%SZ").to_string());
        let updated = self
            .api
            .0
            .store
            .update(
                &record.key,
                object::to_stored(&new)?,
                Some(record.mod_revision),
            )
            .await
            .map_err(|e| store_error(self.target, e))?;
        Ok(self.respond(StatusCode::OK, &object::from_record(&updated)?))
    }

    /// Removes the object (and, for a namespace, everything in it) and
    /// releases what was allocated for it.
    async fn remove(&self, record: &Record, old: &Value) -> Result<Value, ApiError> {
        if self.resource().kind == "Namespace" {
            remove_namespace_contents(self.api, self.target.name()).await?;
        }
        let deleted = self
            .api
            .0
            .store
            .delete(&record.key, Some(record.mod_revision))
            .await
            .map_err(|e| store_error(self.target, e))?;
        release(self.api, self.resource(), old).await;
        object::from_record(&deleted)
    }

    async fn delete_collection(&self) -> Result<Response, ApiError> {
        let labels = Selector::labels(self.query.get("labelSelector").map_or("", String::as_str))?;
        let fields = Selector::fields(self.query.get("fieldSelector").map_or("", String::as_str))?;
        let (records, _) = self
            .api
            .0
            .store
            .list(&self.target.prefix())
            .await
            .map_err(|e| store_error(self.target, e))?;
        let mut deleted = Vec::new();
        for record in records {
            let obj = object::from_record(&record)?;
            if !(labels.matches_labels(&obj) && fields.matches_fields(&obj)) {
                continue;
            }
            let target = Target {
                resource: self.target.resource,
                namespace: object::namespace(&obj).map(String::from),
                name: object::name(&obj).map(String::from),
                sub: None,
            };
            let ctx = Ctx {
                target: &target,
                ..*self
            };
            match ctx.delete(&Bytes::new()).await {
                Ok(_) | Err(ApiError { code: 404, .. }) => deleted.push(obj),
                Err(e) => return Err(e),
            }
        }
        let revision = self
            .api
            .0
            .store
            .revision()
            .await
            .map_err(|e| store_error(self.target, e))?;
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "apiVersion": self.resource().api_version(),
                "kind": self.resource().list_kind(),
                "metadata": {"resourceVersion": revision.to_string()},
                "items": deleted,
            }),
        ))
    }
}

/// Whether deleting this object waits for its node (a pod bound to a
/// node, not yet confirmed gone).
fn awaits_node(resource: &Resource, obj: &Value) -> bool {
    resource.kind == "Pod"
        && obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        && !matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
}

async fn release(api: &Api, resource: &Resource, obj: &Value) {
    match resource.kind {
        "Service" => api.0.alloc.release_service(obj).await,
        "Node" => api.0.alloc.release_node(obj).await,
        _ => {}
    }
}

/// Deletes every namespaced object in namespace `ns`.
async fn remove_namespace_contents(api: &Api, ns: &str) -> Result<(), ApiError> {
    for resource in resources::RESOURCES.iter().filter(|r| r.namespaced) {
        let (records, _) = api
            .0
            .store
            .list(&resource.scope_prefix(Some(ns)))
            .await
            .map_err(|e| ApiError::from_store(resource.plural, ns, e))?;
        for record in records {
            let obj = object::from_record(&record)?;
            match api.0.store.delete(&record.key, None).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => release(api, resource, &obj).await,
                Err(e) => return Err(ApiError::from_store(resource.plural, ns, e)),
            }
        }
    }
    Ok(())
}

/// The autoscaling/v1 Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let selector: Vec<String> = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    let meta = &obj["metadata"];
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"],
            "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector.join(","),
        },
    })
}

/// Creates the namespaces and the `kubernetes` Service every cluster has,
/// and keeps the Service's EndpointSlice pointing at this server.
pub(super) async fn bootstrap(api: &Api) -> Result<(), ApiError> {
    let namespaces = resources::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("no namespaces"))?;
    for ns in SYSTEM_NAMESPACES {
        let mut obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        object::prepare_create(namespaces, &mut obj)?;
        defaults::apply("Namespace", &mut obj);
        create_if_missing(api, &namespaces.key(None, ns), &obj).await?;
    }
    let services =
        resources::find("", "v1", "services").ok_or_else(|| ApiError::internal("no services"))?;
    let key = services.key(Some("default"), "kubernetes");
    if api
        .0
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store("services", "kubernetes", e))?
        .is_none()
    {
        let ip = api.0.alloc.ranges().api_service_ip().to_string();
        let mut svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip,
                "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                    "targetPort": own_endpoint(&api.0.config.server_address).map_or(6443, |(_, port)| port)}]}});
        object::prepare_create(services, &mut svc)?;
        defaults::apply("Service", &mut svc);
        let claims = api
            .0
            .alloc
            .service(&mut svc, None, "services/default/kubernetes")
            .await?;
        if let Err(e) = create_if_missing(api, &key, &svc).await {
            api.0.alloc.release(claims).await;
            return Err(e);
        }
    }
    publish_own_endpoint(api).await
}

/// The IPv4 address and port clients reach this server at, if the
/// advertised address is an IPv4 address.
fn own_endpoint(server_address: &str) -> Option<(std::net::Ipv4Addr, u16)> {
    let addr: std::net::SocketAddrV4 = server_address.parse().ok()?;
    Some((*addr.ip(), addr.port()))
}

/// Writes the `kubernetes` Service's EndpointSlice with this server's
/// advertised address (as the API server's endpoint reconciler does), so
/// service proxies route the Service to it. Rewritten when the address or
/// port changed since the last start.
async fn publish_own_endpoint(api: &Api) -> Result<(), ApiError> {
    let Some((ip, port)) = own_endpoint(&api.0.config.server_address) else {
        tracing::warn!(address = %api.0.config.server_address, "advertised address is not IPv4: no EndpointSlice for the kubernetes Service");
        return Ok(());
    };
    let slices = resources::find("discovery.k8s.io", "v1", "endpointslices")
        .ok_or_else(|| ApiError::internal("no endpointslices"))?;
    let key = slices.key(Some("default"), "kubernetes");
    let endpoints = json!([{"addresses": [ip.to_string()], "conditions": {"ready": true}}]);
    let ports = json!([{"name": "https", "port": port, "protocol": "TCP"}]);
    let existing = api
        .0
        .store
        .get(&key)
        .await
        .map_err(|e| ApiError::from_store("endpointslices", "kubernetes", e))?;
    match existing {
        None => {
            let mut slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": "IPv4", "endpoints": endpoints, "ports": ports});
            object::prepare_create(slices, &mut slice)?;
            create_if_missing(api, &key, &slice).await
        }
        Some(record) => {
            let mut slice: Value = serde_json::from_slice(&record.value)
                .map_err(|e| ApiError::internal(format!("stored kubernetes EndpointSlice: {e}")))?;
            if slice["endpoints"] == endpoints && slice["ports"] == ports {
                return Ok(());
            }
            slice["endpoints"] = endpoints;
            slice["ports"] = ports;
            api.0
                .store
                .update(&key, object::to_stored(&slice)?, Some(record.mod_revision))
                .await
                .map(drop)
                .map_err(|e| ApiError::from_store("endpointslices", "kubernetes", e))
        }
    }
}

async fn create_if_missing(api: &Api, key: &str, obj: &Value) -> Result<(), ApiError> {
    match api.0.store.create(key, object::to_stored(obj)?).await {
        Ok(_) | Err(StoreError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(ApiError::from_store("bootstrap", key, e)),
    }
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
    fn tables_are_negotiated_from_the_first_accept_choice() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert!(wants_table(&h));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!wants_table(&h));
    }
}
