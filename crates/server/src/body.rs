//! Request bodies: read under the size limit, decoded into the CRD types
//! with the path of the first bad field (`spec.ports[0].port`), checked
//! against the URL, and turned into the object sent to Kubernetes. The
//! object sent is built from the body as written (not re-serialised from
//! the typed value), so a field the types do not know still reaches the
//! API server, whose strict field validation refuses it by name.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::names::{self, Kind};

/// Reads a request body of at most `limit` bytes; 413 beyond it.
pub async fn read(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if is_length_limit(e.as_ref()) => Err(ApiError::too_large(limit)),
        Err(e) => Err(ApiError::bad_request(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<LengthLimitError>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Decodes JSON into `T`, naming the field of the first error.
pub fn typed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::bad_request(
                "the request body is empty: expected a JSON object",
            ));
        }
        // serde would read a struct from an array too.
        Some(b'[') if !accepts_arrays::<T>() => {
            return Err(ApiError::bad_request(
                "the request body must be a JSON object, not an array",
            ));
        }
        _ => {}
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let field = field_of(&path, &message);
        if inner.is_syntax() || inner.is_eof() {
            ApiError::bad_request(format!("the request body is not valid JSON: {message}"))
        } else {
            ApiError::field(field, message)
        }
    })?;
    Ok(value)
}

fn accepts_arrays<T>() -> bool {
    std::any::type_name::<T>() == std::any::type_name::<Value>()
}

/// `spec.replicas`, or `spec.foo` for a missing field `foo` (serde
/// reports it at the path of the object that should hold it).
fn field_of(path: &str, message: &str) -> String {
    let base = if path == "." { "" } else { path };
    // (An unknown field is already in the path.)
    let named = message
        .split("missing field `")
        .nth(1)
        .and_then(|rest| rest.split('`').next());
    match named {
        Some(f) if base.is_empty() => f.to_string(),
        Some(f) => format!("{base}.{f}"),
        None => base.to_string(),
    }
}

/// The shape of a create or replace body; `S` is the CRD's spec type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ObjectBody<S> {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    metadata: BodyMeta,
    #[allow(dead_code)]
    spec: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BodyMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    resource_version: Option<String>,
}

pub const API_VERSION: &str = "mahler.dev/v1alpha1";

/// Where a body is going: the kind, the namespace (for Services and
/// Connections: the environment in the URL) and, for a replace, the name.
pub struct Target<'a> {
    pub kind: Kind,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

/// An object to create or replace, ready to send.
#[derive(Debug, PartialEq)]
pub struct Object {
    pub name: String,
    pub resource_version: Option<String>,
    pub value: Value,
}

/// Parses a create (`target.name` None) or replace body of `S`.
pub fn object<S: DeserializeOwned>(bytes: &[u8], target: &Target) -> Result<Object, ApiError> {
    let body: ObjectBody<S> = typed(bytes)?;
    check_type_meta(
        body.api_version.as_deref(),
        body.kind.as_deref(),
        target.kind,
    )?;
    let meta = body.metadata;
    names::check(target.kind, "metadata.name", &meta.name)?;
    if let Some(url) = target.name
        && url != meta.name
    {
        return Err(ApiError::field(
            "metadata.name",
            format!("{:?} differs from the name in the URL, {url:?}", meta.name),
        ));
    }
    check_namespace(meta.namespace.as_deref(), target)?;
    // The spec as written: everything else came from the typed decoding.
    let raw: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    for part in ["metadata", "spec"] {
        if !raw.get(part).is_some_and(Value::is_object) {
            return Err(ApiError::field(part, "must be a JSON object"));
        }
    }
    let spec = raw.get("spec").cloned().unwrap_or(Value::Null);
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(meta.name));
    if let Some(ns) = target.namespace {
        metadata.insert("namespace".into(), json!(ns));
    }
    if let Some(l) = meta.labels {
        metadata.insert("labels".into(), json!(l));
    }
    if let Some(a) = meta.annotations {
        metadata.insert("annotations".into(), json!(a));
    }
    if let Some(rv) = &meta.resource_version {
        metadata.insert("resourceVersion".into(), json!(rv));
    }
    Ok(Object {
        name: meta.name,
        resource_version: meta.resource_version,
        value: json!({
            "apiVersion": API_VERSION,
            "kind": target.kind.as_str(),
            "metadata": metadata,
            "spec": spec,
        }),
    })
}

fn check_type_meta(
    api_version: Option<&str>,
    kind: Option<&str>,
    want: Kind,
) -> Result<(), ApiError> {
    if let Some(v) = api_version
        && v != API_VERSION
    {
        return Err(ApiError::field(
            "apiVersion",
            format!("{v:?} is not {API_VERSION:?}: leave it out or set it to {API_VERSION}"),
        ));
    }
    if let Some(k) = kind
        && k != want.as_str()
    {
        return Err(ApiError::field(
            "kind",
            format!(
                "{k:?} contradicts the URL, which is for a {}",
                want.as_str()
            ),
        ));
    }
    Ok(())
}

fn check_namespace(ns: Option<&str>, target: &Target) -> Result<(), ApiError> {
    match (ns, target.namespace) {
        (None, _) => Ok(()),
        (Some(""), None) => Ok(()),
        (Some(n), Some(url)) if n == url => Ok(()),
        (Some(n), Some(url)) => Err(ApiError::field(
            "metadata.namespace",
            format!("{n:?} contradicts the environment in the URL, {url:?}"),
        )),
        (Some(n), None) => Err(ApiError::field(
            "metadata.namespace",
            format!(
                "a {} is cluster-scoped and has no namespace, got {n:?}",
                target.kind.as_str()
            ),
        )),
    }
}

/// Checks a JSON merge patch: a JSON object of `metadata` (labels,
/// annotations; name, namespace and resourceVersion only as they are) and
/// `spec`. The API server checks the result against the CRD schema.
pub fn merge_patch(bytes: &[u8], target: &Target) -> Result<Value, ApiError> {
    let value: Value = typed(bytes)?;
    let Value::Object(top) = &value else {
        return Err(ApiError::bad_request(
            "a JSON merge patch must be a JSON object",
        ));
    };
    for (key, v) in top {
        match key.as_str() {
            "apiVersion" | "kind" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| ApiError::field(key.as_str(), "must be a string"))?;
                let (av, k) = if key == "kind" {
                    (None, Some(s))
                } else {
                    (Some(s), None)
                };
                check_type_meta(av, k, target.kind)?;
            }
            "spec" => {
                if !v.is_object() {
                    return Err(ApiError::field("spec", "must be a JSON object"));
                }
            }
            "metadata" => check_patch_metadata(v, target)?,
            other => {
                return Err(ApiError::field(
                    other,
                    format!("unknown field `{other}`: a patch may change metadata and spec"),
                ));
            }
        }
    }
    Ok(value)
}

fn check_patch_metadata(v: &Value, target: &Target) -> Result<(), ApiError> {
    let Value::Object(meta) = v else {
        return Err(ApiError::field("metadata", "must be a JSON object"));
    };
    for (key, v) in meta {
        let field = format!("metadata.{key}");
        match key.as_str() {
            "labels" | "annotations" => match v {
                Value::Null => {}
                Value::Object(m) => {
                    for (k, v) in m {
                        if !(v.is_string() || v.is_null()) {
                            return Err(ApiError::field(
                                format!("{field}.{k}"),
                                "must be a string (or null to remove it)",
                            ));
                        }
                    }
                }
                _ => return Err(ApiError::field(field, "must be a JSON object")),
            },
            "name" => {
                if v.as_str() != target.name {
                    return Err(ApiError::field(
                        field,
                        "cannot be changed (it names the object)",
                    ));
                }
            }
            "namespace" => {
                let n = v
                    .as_str()
                    .ok_or_else(|| ApiError::field(field.clone(), "must be a string"))?;
                check_namespace(Some(n), target)?;
            }
            "resourceVersion" => {
                if !v.is_string() {
                    return Err(ApiError::field(field, "must be a string"));
                }
            }
            other => {
                return Err(ApiError::field(
                    field,
                    format!(
                        "unknown field `{other}`: a patch may change metadata.labels and metadata.annotations"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `POST .../deploy`.
#[derive(Deserialize, Debug, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    /// The container image reference to run, e.g. `registry.example/shop/api:1.4.3`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^\S+$"))]
    pub image: String,
}

impl DeployRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let d: DeployRequest = typed(bytes)?;
        if d.image.is_empty() || d.image.len() > 512 {
            return Err(ApiError::field(
                "image",
                "an image reference has 1 to 512 characters",
            ));
        }
        if d.image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ApiError::field("image", "an image reference has no spaces"));
        }
        Ok(d)
    }
}

/// `POST .../approve`.
#[derive(Deserialize, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The plan id to approve; by default the Service's pending plan. When
    /// given, it must be the pending plan (409 otherwise).
    #[serde(default)]
    #[schemars(length(min = 1, max = 253))]
    pub plan: Option<String>,
}

impl ApproveRequest {
    /// An empty body approves the pending plan.
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let a: ApproveRequest = typed(bytes)?;
        if a.plan.as_deref() == Some("") {
            return Err(ApiError::field("plan", "a plan id cannot be empty"));
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{ConnectionSpec, ServiceSpec};

    const SVC: Target = Target {
        kind: Kind::Service,
        namespace: Some("shop-dev"),
        name: None,
    };

    fn err(r: Result<Object, ApiError>) -> (u16, Option<String>, String) {
        let e = r.unwrap_err();
        (e.code(), e.0.error.field.clone(), e.0.error.message.clone())
    }

    #[test]
    fn a_good_body_becomes_the_object_as_written() {
        let o = object::<ServiceSpec>(
            br#"{"metadata":{"name":"api","labels":{"team":"a"}},"spec":{"source":{"image":"nginx"},"replicas":2,"future":1}}"#,
            &SVC,
        )
        .unwrap();
        assert_eq!(o.name, "api");
        assert_eq!(
            o.value,
            json!({"apiVersion": API_VERSION, "kind": "Service",
                "metadata": {"name": "api", "namespace": "shop-dev", "labels": {"team": "a"}},
                "spec": {"source": {"image": "nginx"}, "replicas": 2, "future": 1}})
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        let (code, field, msg) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"api"},"spec":{"source":{"image":"x"},"replicas":"two"}}"#,
            &SVC,
        ));
        assert_eq!((code, field.as_deref()), (400, Some("spec.replicas")));
        assert!(msg.starts_with("spec.replicas: invalid type"), "{msg}");
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"api"},"spec":{"source":{"image":"x"},"ports":[{"name":"http","port":"80"}]}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("spec.ports[0].port"));
        let (_, field, _) = err(object::<ConnectionSpec>(
            br#"{"metadata":{"name":"api-db"},"spec":{"from":"api","port":5432}}"#,
            &Target {
                kind: Kind::Connection,
                namespace: Some("shop-dev"),
                name: None,
            },
        ));
        assert_eq!(field.as_deref(), Some("spec.to"));
    }

    #[test]
    fn unknown_top_level_and_metadata_fields_are_named() {
        let (code, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"api"},"spec":{"source":{}},"status":{}}"#,
            &SVC,
        ));
        assert_eq!((code, field.as_deref()), (400, Some("status")));
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"api","uid":"x"},"spec":{"source":{}}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("metadata.uid"));
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"api"}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("spec"));
    }

    #[test]
    fn malformed_json_and_empty_bodies_are_400() {
        for body in [&b""[..], b"{", b"[1,", b"nul", b"{\"metadata\":}"] {
            let (code, _, _) = err(object::<ServiceSpec>(body, &SVC));
            assert_eq!(code, 400, "{body:?}");
        }
        let (_, _, msg) = err(object::<ServiceSpec>(b" []", &SVC));
        assert!(msg.contains("not an array"), "{msg}");
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":["api",null,null,null,null],"spec":{"source":{}}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("metadata"));
    }

    #[test]
    fn bodies_must_agree_with_the_url() {
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"api","namespace":"other"},"spec":{"source":{}}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("metadata.namespace"));
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"kind":"Connection","metadata":{"name":"api"},"spec":{"source":{}}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("kind"));
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"apiVersion":"v1","metadata":{"name":"api"},"spec":{"source":{}}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("apiVersion"));
        let put = Target {
            name: Some("web"),
            ..SVC
        };
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"api"},"spec":{"source":{}}}"#,
            &put,
        ));
        assert_eq!(field.as_deref(), Some("metadata.name"));
        let (_, field, _) = err(object::<ServiceSpec>(
            br#"{"metadata":{"name":"Not_A_Name"},"spec":{"source":{}}}"#,
            &SVC,
        ));
        assert_eq!(field.as_deref(), Some("metadata.name"));
    }

    #[test]
    fn merge_patches_touch_only_metadata_and_spec() {
        let t = Target {
            name: Some("api"),
            ..SVC
        };
        assert!(
            merge_patch(
                br#"{"spec":{"replicas":3},"metadata":{"labels":{"a":null}}}"#,
                &t
            )
            .is_ok()
        );
        for (body, field) in [
            (&br#"{"status":{}}"#[..], "status"),
            (br#"{"spec":null}"#, "spec"),
            (br#"{"metadata":{"name":"web"}}"#, "metadata.name"),
            (br#"{"metadata":{"finalizers":[]}}"#, "metadata.finalizers"),
            (br#"{"metadata":{"labels":{"a":1}}}"#, "metadata.labels.a"),
        ] {
            let e = merge_patch(body, &t).unwrap_err();
            assert_eq!(
                (e.code(), e.0.error.field.as_deref()),
                (400, Some(field)),
                "{body:?}"
            );
        }
        assert_eq!(merge_patch(b"[]", &t).unwrap_err().code(), 400);
    }

    #[test]
    fn deploy_and_approve_bodies() {
        assert_eq!(
            DeployRequest::parse(br#"{"image":"nginx:1"}"#)
                .unwrap()
                .image,
            "nginx:1"
        );
        for bad in [
            &br#"{"image":""}"#[..],
            br#"{"image":"a b"}"#,
            br#"{"image":1}"#,
            br#"{"image":"x","tag":1}"#,
            b"{}",
        ] {
            assert_eq!(
                DeployRequest::parse(bad).unwrap_err().code(),
                400,
                "{bad:?}"
            );
        }
        assert_eq!(
            ApproveRequest::parse(b"").unwrap(),
            ApproveRequest::default()
        );
        assert_eq!(
            ApproveRequest::parse(br#"{"plan":"p1"}"#)
                .unwrap()
                .plan
                .as_deref(),
            Some("p1")
        );
        let e = ApproveRequest::parse(br#"{"plan":7}"#).unwrap_err();
        assert_eq!(e.0.error.field.as_deref(), Some("plan"));
    }

    #[tokio::test]
    async fn oversized_bodies_are_413() {
        let headers = HeaderMap::new();
        let e = read(&headers, Body::from(vec![b' '; 2048]), 1024)
            .await
            .unwrap_err();
        assert_eq!(e.code(), 413);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "999999".parse().unwrap());
        let e = read(&headers, Body::empty(), 1024).await.unwrap_err();
        assert_eq!(e.code(), 413);
        let ok = read(&HeaderMap::new(), Body::from("{}"), 1024)
            .await
            .unwrap();
        assert_eq!(&ok[..], b"{}");
    }
}
