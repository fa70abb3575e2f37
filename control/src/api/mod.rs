//! The HTTP API: routing, authentication, and the TLS server (`serve`).

mod discovery;
mod openapi;
mod rest;
mod serve;
mod table;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde_json::json;

use crate::alloc::Allocator;
use crate::auth::{Authenticator, User};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::registry::{self, Registry};
use crate::store::Store;

pub use discovery::KUBERNETES_MINOR;
pub use serve::{raise_open_files_limit, serve, ConnectionLimits};

/// Settings of the API layer.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// `host:port` clients reach the server at (for discovery).
    pub server_address: String,
    /// How often watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
}

/// The API's shared state.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

struct Inner {
    /// Whether the default namespaces and Services exist (readiness).
    bootstrapped: std::sync::atomic::AtomicBool,
    registry: Registry,
    auth: Authenticator,
    metrics: Metrics,
    config: ApiConfig,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("config", &self.0.config)
            .finish()
    }
}

impl Api {
    /// The API over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        alloc: Allocator,
        auth: Authenticator,
        config: ApiConfig,
    ) -> Self {
        Api(Arc::new(Inner {
            bootstrapped: std::sync::atomic::AtomicBool::new(false),
            registry: Registry::new(store, alloc),
            auth,
            metrics: Metrics::default(),
            config,
        }))
    }

    /// Creates what every cluster has if it is missing: the `default`,
    /// `kube-system`, `kube-public` and `kube-node-lease` namespaces and the
    /// `kubernetes` Service.
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        registry::bootstrap(&self.0.registry, &self.0.config.server_address).await?;
        self.0
            .bootstrapped
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// The controllers' metrics, served at this API's `/metrics`.
    pub fn controller_metrics(&self) -> crate::metrics::ControllerMetrics {
        self.0.metrics.controllers()
    }

    /// A client of this API that calls the router in process, as the
    /// administrator `name` (the controllers' client).
    pub fn client(&self, name: &str) -> kube::Client {
        let user = User::Admin {
            name: name.to_owned(),
        };
        let service = tower::ServiceBuilder::new()
            .map_request(move |req: axum::http::Request<kube::client::Body>| {
                let mut req = req.map(axum::body::Body::new);
                req.extensions_mut().insert(user.clone());
                req
            })
            .service(self.router());
        kube::Client::new(service, "default")
    }

    /// The routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/version", get(|| async { Json(discovery::version()) }))
            .route("/healthz", get(|| async { "ok" }))
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics))
            .route("/api", get(core_versions))
            .route("/apis", get(|| async { Json(discovery::groups()) }))
            .route("/apis/{group}", get(group_info))
            .route("/api/{version}", get(core_resources))
            .route("/apis/{group}/{version}", get(group_resources))
            .route("/openapi/v3", get(|| async { Json(openapi::index()) }))
            .route("/openapi/v3/{*path}", get(openapi_document))
            .route("/api/v1/{*rest}", any(core_rest))
            .route("/apis/{group}/{version}/{*rest}", any(group_rest))
            .fallback(|req: Request| async move { ApiError::no_route(req.uri().path()) })
            .layer(middleware::from_fn_with_state(self.clone(), authenticate))
            .with_state(self.clone())
    }
}

/// Paths anyone may read, as kube-apiserver allows them to anonymous users.
const PUBLIC_PATHS: &[&str] = &["/healthz", "/livez", "/readyz", "/version"];

async fn authenticate(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    // Only in-process clients ([`Api::client`]) arrive with a user set:
    // requests from the network start without extensions.
    if PUBLIC_PATHS.contains(&req.uri().path()) || req.extensions().get::<User>().is_some() {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token.and_then(|t| api.0.auth.authenticate(t)) {
        Some(user) => {
            req.extensions_mut().insert(user);
            next.run(req).await
        }
        None => ApiError::unauthorized().into_response(),
    }
}

async fn readyz(State(api): State<Api>) -> Response {
    match api.0.registry.store().revision().await {
        Ok(_) => "ok".into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("[-]store failed: {e}\nreadyz check failed\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let size = api.0.registry.store().size_bytes().await.unwrap_or(0);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        api.0.metrics.render(size),
    )
        .into_response()
}

async fn core_versions(State(api): State<Api>) -> Response {
    Json(discovery::core_versions(&api.0.config.server_address)).into_response()
}

async fn group_info(Path(group): Path<String>) -> Response {
    match discovery::group_info(&group) {
        Some(info) => Json(info).into_response(),
        None => ApiError::no_route(&format!("/apis/{group}")).into_response(),
    }
}

async fn core_resources(Path(version): Path<String>) -> Response {
    match discovery::resource_list("", &version) {
        Some(list) => Json(list).into_response(),
        None => ApiError::no_route(&format!("/api/{version}")).into_response(),
    }
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> Response {
    match discovery::resource_list(&group, &version) {
        Some(list) => Json(list).into_response(),
        None => ApiError::no_route(&format!("/apis/{group}/{version}")).into_response(),
    }
}

async fn openapi_document(Path(path): Path<String>) -> Response {
    match openapi::document(&path) {
        Some(doc) => Json(doc).into_response(),
        None => ApiError::no_route(&format!("/openapi/v3/{path}")).into_response(),
    }
}

async fn core_rest(State(api): State<Api>, Path(rest): Path<String>, req: Request) -> Response {
    rest::handle(&api, "", "v1", &rest, req).await
}

async fn group_rest(
    State(api): State<Api>,
    Path((group, version, rest)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    rest::handle(&api, &group, &version, &rest, req).await
}

/// The authenticated user of a request (set by the middleware).
fn user_of(req: &Request) -> Result<User, ApiError> {
    req.extensions()
        .get::<User>()
        .cloned()
        .ok_or_else(ApiError::unauthorized)
}

/// A JSON response with a status code.
fn json_response(code: StatusCode, value: &serde_json::Value) -> Response {
    (code, Json(value)).into_response()
}

/// The Status body of a successful delete of many objects.
fn success_status() -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}
