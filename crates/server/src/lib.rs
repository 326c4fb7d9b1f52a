//! Mahler's REST API (docs/api.md): projects, environments, services and
//! connections over HTTP, for portals, bots and pipelines. Kubernetes does
//! all authentication and authorization: a bearer token is checked with a
//! TokenReview ([`auth`]), then every Kubernetes call is made impersonating
//! the reviewed user, so RBAC and the admission policies decide and audit
//! logs name the real user. Built on `mahler-api` and `mahler-client` only.

pub mod auth;
pub mod body;
pub mod error;
pub mod events;
pub mod handlers;
pub mod metrics;
pub mod names;
pub mod openapi;
pub mod serve;
pub mod views;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::handlers::routes as h;
use crate::metrics::{Metrics, RequestLabels, RouteLabels};

/// What every handler shares.
pub struct App {
    pub auth: Authenticator,
    /// The server's own client: TokenReviews and /readyz only.
    pub base: kube::Client,
    pub metrics: Arc<Metrics>,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// Becomes true on SIGTERM/SIGINT: event streams end.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Longest an event stream runs before it ends (the client reconnects,
    /// and its token is reviewed again); also bounded by the token's expiry.
    pub stream_max: Duration,
    pub openapi: String,
}

/// The matched route of a request, passed out to the logging layer.
#[derive(Clone)]
struct Route(String);
/// The reviewed user of a request, for the request log.
#[derive(Clone)]
struct User(String);

/// The whole HTTP surface.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/projects",
            get(h::list_projects).post(h::create_project),
        )
        .route(
            "/api/v1/projects/{name}",
            get(h::get_project)
                .put(h::replace_project)
                .patch(h::patch_project)
                .delete(h::delete_project),
        )
        .route(
            "/api/v1/environments",
            get(h::list_environments).post(h::create_environment),
        )
        .route(
            "/api/v1/environments/{name}",
            get(h::get_environment)
                .put(h::replace_environment)
                .patch(h::patch_environment)
                .delete(h::delete_environment),
        )
        .route(
            "/api/v1/environments/{env}/services",
            get(h::list_services).post(h::create_service),
        )
        .route(
            "/api/v1/environments/{env}/services/{name}",
            get(h::get_service)
                .put(h::replace_service)
                .patch(h::patch_service)
                .delete(h::delete_service),
        )
        .route(
            "/api/v1/environments/{env}/services/{name}/deploy",
            post(h::deploy_service),
        )
        .route(
            "/api/v1/environments/{env}/services/{name}/approve",
            post(h::approve_service),
        )
        .route(
            "/api/v1/environments/{env}/connections",
            get(h::list_connections).post(h::create_connection),
        )
        .route(
            "/api/v1/environments/{env}/connections/{name}",
            get(h::get_connection)
                .put(h::replace_connection)
                .patch(h::patch_connection)
                .delete(h::delete_connection),
        )
        .route(
            "/api/v1/environments/{env}/graph",
            get(h::environment_graph),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), timeout));
    // Not under the request timeout: a stream lasts as long as the client.
    let streams = Router::new().route("/api/v1/environments/{env}/events", get(events::handler));
    let authenticated = api
        .merge(streams)
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate));
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .merge(authenticated)
        .route_layer(middleware::from_fn(tag_route))
        .fallback(|| async {
            ApiError::not_found("no such route: the API is under /api/v1 (see /openapi.json)")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "this route does not take this method (see /openapi.json)",
            )
        })
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

async fn tag_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut res = next.run(req).await;
    if let Some(r) = route {
        res.extensions_mut().insert(Route(r));
    }
    res
}

async fn authenticate(State(app): State<Arc<App>>, mut req: Request, next: Next) -> Response {
    match app.auth.authenticate(req.headers()).await {
        Ok(id) => {
            let user = User(id.username.clone());
            req.extensions_mut().insert(id);
            let mut res = next.run(req).await;
            res.extensions_mut().insert(user);
            res
        }
        Err(e) => e.into_response(),
    }
}

async fn timeout(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(app.request_timeout, next.run(req)).await {
        Ok(res) => res,
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!(
                "the request took longer than {} s",
                app.request_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// Request log and metrics; and any error response that is not JSON yet
/// (a rejection axum made) gets the API's error body.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    // A fixed set: any other method string (hyper accepts extension
    // methods, before authentication) would add a metric series.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "OTHER".to_string(),
    };
    let mut res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if (status.is_client_error() || status.is_server_error()) && !is_json {
        let ext = res.extensions().clone();
        let reason = status
            .canonical_reason()
            .unwrap_or("Error")
            .replace(' ', "");
        let msg = status.canonical_reason().unwrap_or("error").to_string();
        res = ApiError::new(status, &reason, msg).into_response();
        *res.extensions_mut() = ext;
    }
    let route = res
        .extensions()
        .get::<Route>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| "unmatched".into());
    let user = res
        .extensions()
        .get::<User>()
        .map(|u| u.0.clone())
        .unwrap_or_default();
    let latency = start.elapsed();
    let streaming = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    app.metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: status.as_u16(),
        })
        .inc();
    if !streaming {
        app.metrics
            .latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(latency.as_secs_f64());
    }
    tracing::info!(
        method,
        route,
        status = status.as_u16(),
        latency_ms = latency.as_secs_f64() * 1000.0,
        user,
        "request"
    );
    res
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    match tokio::time::timeout(Duration::from_secs(3), app.base.apiserver_version()).await {
        Ok(Ok(_)) => axum::Json(json!({"status": "ok"})).into_response(),
        Ok(Err(e)) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("the Kubernetes API does not answer: {e}"),
        )
        .into_response(),
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the Kubernetes API did not answer within 3 s",
        )
        .into_response(),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        app.metrics.encode(),
    )
        .into_response()
}

async fn openapi_json(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        app.openapi.clone(),
    )
        .into_response()
}
