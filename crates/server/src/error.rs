//! The one error shape of the API, `{"error": {...}}`, and how Kubernetes
//! errors map onto it. A client mistake is always a 4xx; a 5xx only means
//! the server or the Kubernetes API failed.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;

/// What a request asked Kubernetes to do: named in a 403 body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Action {
    pub verb: &'static str,
    /// `services.mahler.dev`, `tokenreviews.authentication.k8s.io`, ...
    pub resource: &'static str,
    pub namespace: Option<String>,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// The HTTP status code.
    pub code: u16,
    /// A machine-readable reason: `BadRequest`, `Unauthorized`, `Forbidden`,
    /// `NotFound`, `Conflict`, `Invalid`, `RequestEntityTooLarge`, ...
    pub reason: String,
    /// What went wrong, for people.
    pub message: String,
    /// The field of the request at fault (`spec.replicas`, `metadata.name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// On a 403: the Kubernetes verb that was denied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verb: Option<String>,
    /// On a 403: the resource (`services.mahler.dev`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// On a 403: the namespace (absent for cluster-scoped resources).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} {}: {}", .0.error.code, .0.error.reason, .0.error.message)]
pub struct ApiError(pub Box<ErrorBody>);

impl ApiError {
    pub fn new(code: StatusCode, reason: &str, message: impl Into<String>) -> Self {
        ApiError(Box::new(ErrorBody {
            error: ErrorDetail {
                code: code.as_u16(),
                reason: reason.to_string(),
                message: message.into(),
                field: None,
                verb: None,
                resource: None,
                namespace: None,
            },
        }))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// A 400 naming the field at fault.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        let message = if field.is_empty() || message.starts_with(&field) {
            message
        } else {
            format!("{field}: {message}")
        };
        let mut e = Self::bad_request(message);
        if !field.is_empty() {
            e.0.error.field = Some(field);
        }
        e
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "Unauthorized", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    pub fn code(&self) -> u16 {
        self.0.error.code
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// Maps an error of a Kubernetes call made for `action`.
    pub fn from_kube(err: kube::Error, action: &Action) -> Self {
        match err {
            kube::Error::Api(status) => Self::from_status(&status, action),
            kube::Error::Service(e) if is_timeout(e.as_ref()) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "Timeout",
                "the Kubernetes API did not answer in time",
            ),
            kube::Error::SerdeError(e) => Self::new(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                format!("the Kubernetes API sent an answer that could not be decoded: {e}"),
            ),
            e => {
                tracing::warn!(error = %e, "Kubernetes API call failed");
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    "BadGateway",
                    format!("the Kubernetes API could not be reached: {e}"),
                )
            }
        }
    }

    /// Maps a Kubernetes `Status` (the body of an error response).
    pub fn from_status(s: &kube::core::Status, action: &Action) -> Self {
        let code = s.code;
        let reason = if s.reason.is_empty() {
            StatusCode::from_u16(code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("Error")
                .replace(' ', "")
        } else {
            s.reason.clone()
        };
        let causes = s
            .details
            .as_ref()
            .map(|d| d.causes.as_slice())
            .unwrap_or_default();
        let field = causes
            .iter()
            .find(|c| !c.field.is_empty())
            .map(|c| c.field.clone())
            .or_else(|| strict_decoding_field(&s.message));
        match code {
            401 => Self::unauthorized(format!(
                "the Kubernetes API refused the request's credentials: {}",
                s.message
            )),
            403 => {
                let ns = action
                    .namespace
                    .as_deref()
                    .map(|n| format!(" in namespace {n}"))
                    .unwrap_or_else(|| " (cluster-scoped)".to_string());
                let mut e = Self::new(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    format!(
                        "not allowed to {} {}{ns}: {}",
                        action.verb, action.resource, s.message
                    ),
                );
                e.0.error.verb = Some(action.verb.to_string());
                e.0.error.resource = Some(action.resource.to_string());
                e.0.error.namespace = action.namespace.clone();
                e
            }
            // Strict decoding (unknown or duplicate fields), and Invalid
            // (the CRD schema, CEL rules, admission policies): bad input.
            400 | 422 => {
                let mut e = Self::bad_request(s.message.clone());
                e.0.error.reason = reason;
                e.0.error.field = field;
                e
            }
            404 | 405 | 406 | 409 | 410 | 412 | 413 | 415 | 429 => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
                let mut e = Self::new(status, &reason, s.message.clone());
                e.0.error.field = field;
                e
            }
            504 => Self::new(StatusCode::GATEWAY_TIMEOUT, &reason, s.message.clone()),
            c if (400..500).contains(&c) => {
                let mut e = Self::bad_request(s.message.clone());
                e.0.error.reason = reason;
                e
            }
            _ => Self::new(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                format!("the Kubernetes API failed ({code} {reason}): {}", s.message),
            ),
        }
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if e.is::<tokio::time::error::Elapsed>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The field of an API server strict-decoding error:
/// `strict decoding error: unknown field "spec.foo"`.
fn strict_decoding_field(message: &str) -> Option<String> {
    let rest = message.split("unknown field \"").nth(1)?;
    let field = rest.split('"').next()?;
    (!field.is_empty()).then(|| field.to_string())
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut res = (status, Json(*self.0)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::{StatusCause, StatusDetails};

    fn status(code: u16, reason: &str, message: &str) -> Status {
        Status {
            code,
            reason: reason.into(),
            message: message.into(),
            ..Default::default()
        }
    }

    fn action() -> Action {
        Action {
            verb: "create",
            resource: "services.mahler.dev",
            namespace: Some("shop-dev".into()),
        }
    }

    #[test]
    fn forbidden_names_verb_resource_and_namespace() {
        let e = ApiError::from_status(
            &status(
                403,
                "Forbidden",
                "services.mahler.dev is forbidden: User \"u\" cannot create",
            ),
            &action(),
        );
        let d = &e.0.error;
        assert_eq!(d.code, 403);
        assert_eq!(d.verb.as_deref(), Some("create"));
        assert_eq!(d.resource.as_deref(), Some("services.mahler.dev"));
        assert_eq!(d.namespace.as_deref(), Some("shop-dev"));
        assert!(d.message.starts_with("not allowed to create services.mahler.dev in namespace shop-dev: services.mahler.dev is forbidden"), "{}", d.message);
    }

    #[test]
    fn invalid_becomes_400_with_the_field() {
        let mut s = status(
            422,
            "Invalid",
            "Service.mahler.dev \"api\" is invalid: spec.replicas: Invalid value: 5000",
        );
        s.details = Some(StatusDetails {
            causes: vec![StatusCause {
                reason: "FieldValueInvalid".into(),
                message: "Invalid value: 5000".into(),
                field: "spec.replicas".into(),
            }],
            name: "api".into(),
            group: "mahler.dev".into(),
            kind: "services".into(),
            uid: String::new(),
            retry_after_seconds: 0,
        });
        let e = ApiError::from_status(&s, &action());
        assert_eq!(e.code(), 400);
        assert_eq!(e.0.error.reason, "Invalid");
        assert_eq!(e.0.error.field.as_deref(), Some("spec.replicas"));
    }

    #[test]
    fn strict_decoding_names_the_unknown_field() {
        let s = status(
            400,
            "BadRequest",
            "Service in version \"v1alpha1\" cannot be handled as a Service: strict decoding error: unknown field \"spec.replica\"",
        );
        let e = ApiError::from_status(&s, &action());
        assert_eq!(e.code(), 400);
        assert_eq!(e.0.error.field.as_deref(), Some("spec.replica"));
    }

    #[test]
    fn client_errors_pass_through_and_server_errors_are_502() {
        for code in [404, 409, 429] {
            assert_eq!(
                ApiError::from_status(&status(code, "", "x"), &action()).code(),
                code
            );
        }
        let e = ApiError::from_status(&status(401, "Unauthorized", "x"), &action());
        assert_eq!(e.code(), 401);
        assert_eq!(
            ApiError::from_status(&status(500, "InternalError", "x"), &action()).code(),
            502
        );
        assert_eq!(
            ApiError::from_status(&status(409, "", "x"), &action())
                .0
                .error
                .reason,
            "Conflict"
        );
    }

    #[test]
    fn unauthorized_response_asks_for_a_bearer_token() {
        let res = ApiError::unauthorized("no token").into_response();
        assert_eq!(res.status(), 401);
        assert_eq!(res.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[test]
    fn field_errors_prefix_the_message() {
        let e = ApiError::field("spec.replicas", "invalid type: string \"x\", expected i32");
        assert_eq!(
            e.0.error.message,
            "spec.replicas: invalid type: string \"x\", expected i32"
        );
        assert_eq!(e.0.error.field.as_deref(), Some("spec.replicas"));
    }
}
