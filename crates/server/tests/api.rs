//! Without a cluster: the committed OpenAPI document is current, every
//! documented operation is routed, and requests behave up to the first
//! Kubernetes call (a fake API server answers TokenReviews).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use mahler_server::auth::{Authenticator, CacheConfig};
use mahler_server::metrics::Metrics;
use mahler_server::{App, openapi, router};
use serde_json::{Value, json};
use tower::ServiceExt;

#[test]
fn committed_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == openapi::render(),
        "docs/openapi.json is stale: run `make openapi` (mahler-server openapi > docs/openapi.json)"
    );
}

/// A fake Kubernetes API: TokenReview accepts the token "good" as alice,
/// everything else answers 403.
fn fake_kube(calls: Arc<std::sync::Mutex<Vec<String>>>) -> kube::Client {
    let svc = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let calls = calls.clone();
        async move {
            use http_body_util::BodyExt;
            let path = req.uri().path().to_string();
            let user = req
                .headers()
                .get("impersonate-user")
                .map(|v| v.to_str().unwrap().to_string());
            calls
                .lock()
                .unwrap()
                .push(format!("{} {path} as {user:?}", req.method()));
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let (code, out) = if path.ends_with("/tokenreviews") {
                let review: Value = serde_json::from_slice(&body).unwrap();
                let ok = review["spec"]["token"] == "good";
                (
                    200,
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "status": if ok {
                        json!({"authenticated": true, "user": {"username": "alice", "uid": "u1", "groups": ["devs", "system:authenticated"]}})
                    } else {
                        json!({"authenticated": false, "error": "invalid bearer token"})
                    }}),
                )
            } else {
                (
                    403,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
                    "message": "services.mahler.dev is forbidden: User \"alice\" cannot list resource"}),
                )
            };
            let res = http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&out).unwrap()))
                .unwrap();
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    kube::Client::new(svc, "default")
}

fn app(calls: Arc<std::sync::Mutex<Vec<String>>>) -> axum::Router {
    let base = fake_kube(calls);
    let metrics = Arc::new(Metrics::new());
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    std::mem::forget(_stop);
    router(Arc::new(App {
        auth: Authenticator::new(base.clone(), CacheConfig::default(), metrics.clone()),
        base,
        metrics,
        body_limit: 1024,
        request_timeout: Duration::from_secs(5),
        shutdown,
        stream_max: Duration::from_secs(60),
        openapi: openapi::render(),
    }))
}

async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value, http::HeaderMap) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        headers,
    )
}

fn concrete(path: &str) -> String {
    path.replace("{env}", "shop-dev").replace("{name}", "api")
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_authenticated() {
    let app = app(Default::default());
    let doc = openapi::document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let (status, body, headers) =
                send(&app, &method.to_uppercase(), &concrete(path), None, "{}").await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("Authorization: Bearer"),
                "{body}"
            );
        }
    }
    let (status, body, _) = send(&app, "GET", "/api/v1/nothing", None, "").await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_u16()),
        (404, Some(404))
    );
    let (status, body, _) = send(&app, "DELETE", "/api/v1/projects", Some("good"), "").await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["error"]["reason"], "MethodNotAllowed");
}

trait AsU16 {
    fn as_u16(&self) -> Option<u16>;
}
impl AsU16 for Value {
    fn as_u16(&self) -> Option<u16> {
        self.as_u64().map(|n| n as u16)
    }
}

#[tokio::test]
async fn bad_input_never_reaches_kubernetes() {
    let calls: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let app = app(calls.clone());
    let svc = "/api/v1/environments/shop-dev/services";
    let cases = [
        ("POST", svc, "{", 400),
        (
            "POST",
            svc,
            r#"{"metadata":{"name":"api"},"spec":{"source":{"image":"x"},"replicas":"two"}}"#,
            400,
        ),
        (
            "POST",
            svc,
            r#"{"metadata":{"name":"Bad_Name"},"spec":{"source":{}}}"#,
            400,
        ),
        ("GET", "/api/v1/environments/Bad_Env/services", "", 400),
        ("GET", "/api/v1/projects/-x", "", 400),
        ("PATCH", "/api/v1/projects/shop", r#"{"status":{}}"#, 400),
        (
            "POST",
            "/api/v1/environments/shop-dev/services/api/deploy",
            r#"{"image":""}"#,
            400,
        ),
        (
            "POST",
            svc,
            &format!(
                r#"{{"metadata":{{"name":"api"}},"spec":{{"command":["{}"]}}}}"#,
                "x".repeat(2000)
            ),
            413,
        ),
        ("GET", "/api/v1/environments?project=NO", "", 400),
    ];
    for (method, uri, body, want) in cases {
        let (status, out, _) = send(&app, method, uri, Some("good"), body).await;
        assert_eq!(status.as_u16(), want, "{method} {uri} {body}: {out}");
        assert_eq!(
            out["error"]["code"].as_u64(),
            Some(u64::from(want)),
            "{out}"
        );
    }
    let (_, out, _) = send(
        &app,
        "POST",
        svc,
        Some("good"),
        r#"{"metadata":{"name":"api"},"spec":{"source":{},"replicas":"x"}}"#,
    )
    .await;
    assert_eq!(out["error"]["field"], "spec.replicas");
    let calls = calls.lock().unwrap();
    assert_eq!(
        calls.len(),
        1,
        "one TokenReview, cached, and nothing else: {calls:?}"
    );
    assert!(calls[0].starts_with("POST /apis/authentication.k8s.io/v1/tokenreviews as None"));
}

#[tokio::test]
async fn calls_impersonate_the_reviewed_user_and_403_names_the_action() {
    let calls: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
    let app = app(calls.clone());
    let (status, out, _) = send(
        &app,
        "GET",
        "/api/v1/environments/shop-dev/services",
        Some("good"),
        "",
    )
    .await;
    assert_eq!(status, 403, "{out}");
    let e = &out["error"];
    assert_eq!(
        (
            e["verb"].as_str(),
            e["resource"].as_str(),
            e["namespace"].as_str()
        ),
        (Some("list"), Some("services.mahler.dev"), Some("shop-dev"))
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("cannot list resource"),
        "{e}"
    );
    let (status, out, _) = send(&app, "GET", "/api/v1/projects", Some("bad"), "").await;
    assert_eq!(status, 401, "{out}");
    assert!(
        out["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid bearer token"),
        "{out}"
    );
    let calls = calls.lock().unwrap();
    assert_eq!(
        calls[1],
        "GET /apis/mahler.dev/v1alpha1/namespaces/shop-dev/services as Some(\"alice\")"
    );
}

#[tokio::test]
async fn metrics_count_requests_by_route() {
    let app = app(Default::default());
    send(&app, "GET", "/api/v1/projects/shop", Some("good"), "").await;
    send(&app, "GET", "/api/v1/projects/shop", Some("good"), "").await;
    let res = app
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains(r#"mahler_api_http_requests_total{route="/api/v1/projects/{name}",method="GET",status="403"} 2"#), "{text}");
    assert!(
        text.contains(r#"mahler_api_token_reviews_total{result="authenticated"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"mahler_api_token_cache_hits_total{result="accepted"} 1"#),
        "{text}"
    );
}
