//! Authentication: `Authorization: Bearer <token>` checked with a
//! TokenReview through the server's own client, the verdict cached briefly
//! (keyed by the token's SHA-256, never the token), and for an accepted
//! token a Kubernetes client that impersonates the reviewed user, so that
//! RBAC and the admission policies decide and audit logs name the user.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use base64::Engine;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::Client;
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};

use crate::error::{Action, ApiError};
use crate::metrics::{Metrics, ResultLabels};

/// A reviewed user and the client that acts as them.
#[derive(Clone)]
pub struct Identity {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub client: Client,
    /// When the token expires, if it says (a JWT's `exp`).
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("username", &self.username)
            .field("uid", &self.uid)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// How long verdicts are kept and how many.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    pub max_entries: usize,
    pub accepted_ttl: Duration,
    pub refused_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 10_000,
            accepted_ttl: Duration::from_secs(30),
            refused_ttl: Duration::from_secs(5),
        }
    }
}

/// A bounded map whose entries expire. When full, expired entries go
/// first, then the entry closest to expiring.
pub struct TtlCache<K, V> {
    max: usize,
    entries: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(max: usize) -> Self {
        TtlCache {
            max: max.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((v, expires)) if *expires > now => Some(v.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        if ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.max && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.max
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (_, expires))| *expires)
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(key, (value, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Debug)]
enum Verdict {
    Accepted(Arc<Identity>),
    Refused(String),
}

pub struct Authenticator {
    base: Client,
    config: CacheConfig,
    cache: TtlCache<[u8; 32], Verdict>,
    metrics: Arc<Metrics>,
    /// TokenReviews in flight at most: a flood of new (random) tokens waits
    /// here instead of loading kube-apiserver, and gives up with a 503.
    reviews: tokio::sync::Semaphore,
}

/// TokenReviews in flight at most, and how long a request waits for one.
const MAX_REVIEWS: usize = 32;
const REVIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

const EXPECTED: &str = "send `Authorization: Bearer <token>` with a Kubernetes token (a ServiceAccount token from `kubectl create token`, or your cluster's OIDC token)";

impl Authenticator {
    pub fn new(base: Client, config: CacheConfig, metrics: Arc<Metrics>) -> Self {
        Authenticator {
            base,
            config,
            cache: TtlCache::new(config.max_entries),
            metrics,
            reviews: tokio::sync::Semaphore::new(MAX_REVIEWS),
        }
    }

    /// The identity of a request, or a 401 saying what is expected.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, ApiError> {
        let token = bearer(headers)?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(v) = self.cache.get(&key, Instant::now()) {
            return match v {
                Verdict::Accepted(id) => {
                    self.hit("accepted");
                    Ok(id)
                }
                Verdict::Refused(msg) => {
                    self.hit("refused");
                    Err(ApiError::unauthorized(msg))
                }
            };
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: None,
            },
            ..Default::default()
        };
        let busy = || {
            self.reviewed("busy");
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the token could not be checked in time (too many new tokens at once, or kube-apiserver is slow); retry shortly",
            )
        };
        let _permit = match tokio::time::timeout(REVIEW_WAIT, self.reviews.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err(busy()),
        };
        let result = tokio::time::timeout(
            REVIEW_WAIT,
            Api::<TokenReview>::all(self.base.clone()).create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| busy())?;
        let status = match result {
            Ok(r) => r.status.unwrap_or_default(),
            Err(e) => {
                self.reviewed("error");
                tracing::warn!(error = %e, "TokenReview failed");
                let action = Action {
                    verb: "create",
                    resource: "tokenreviews.authentication.k8s.io",
                    namespace: None,
                };
                let inner = ApiError::from_kube(e, &action);
                return Err(ApiError::new(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "ServiceUnavailable",
                    format!(
                        "the token could not be checked (TokenReview failed): {}",
                        inner.0.error.message
                    ),
                ));
            }
        };
        let expiry = token_expiry(token);
        let now = SystemTime::now();
        let user = status.user.filter(|u| {
            status.authenticated == Some(true)
                && u.username.as_deref().is_some_and(|n| !n.is_empty())
        });
        let Some(user) = user else {
            self.reviewed("refused");
            let why = status.error.filter(|e| !e.is_empty());
            let msg = match why {
                Some(e) => {
                    format!("the bearer token was not accepted by Kubernetes ({e}): {EXPECTED}")
                }
                None => format!("the bearer token was not accepted by Kubernetes: {EXPECTED}"),
            };
            let ttl = ttl(self.config.refused_ttl, expiry, now);
            self.cache
                .insert(key, Verdict::Refused(msg.clone()), ttl, Instant::now());
            return Err(ApiError::unauthorized(msg));
        };
        self.reviewed("authenticated");
        let headers = impersonation_headers(&user)?;
        let identity = Arc::new(Identity {
            username: user.username.clone().unwrap_or_default(),
            uid: user.uid.clone().filter(|u| !u.is_empty()),
            groups: user.groups.clone().unwrap_or_default(),
            client: impersonating(&self.base, headers),
            expires: expiry,
        });
        let ttl = ttl(self.config.accepted_ttl, expiry, now);
        self.cache.insert(
            key,
            Verdict::Accepted(identity.clone()),
            ttl,
            Instant::now(),
        );
        Ok(identity)
    }

    fn hit(&self, result: &'static str) {
        self.metrics
            .token_cache_hits
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    fn reviewed(&self, result: &'static str) {
        self.metrics
            .token_reviews
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(format!(
            "no Authorization header: {EXPECTED}"
        )));
    };
    let value = value.to_str().map_err(|_| {
        ApiError::unauthorized(format!("the Authorization header is not ASCII: {EXPECTED}"))
    })?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized(format!(
            "the Authorization header is not a bearer token: {EXPECTED}"
        )));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::unauthorized(format!(
            "the bearer token is empty: {EXPECTED}"
        )));
    }
    Ok(token)
}

/// How long a verdict may be cached: `default`, never past the token's
/// own expiry.
pub fn ttl(default: Duration, expiry: Option<SystemTime>, now: SystemTime) -> Duration {
    match expiry {
        Some(exp) => exp.duration_since(now).unwrap_or_default().min(default),
        None => default,
    }
}

/// The `exp` claim of a JWT (ServiceAccount and OIDC tokens), read without
/// verifying it: it only ever shortens how long a verdict is cached.
pub fn token_expiry(token: &str) -> Option<SystemTime> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    (exp.is_finite() && exp >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(exp.min(1e12)))
}

pub static IMPERSONATE_USER: HeaderName = HeaderName::from_static("impersonate-user");
pub static IMPERSONATE_GROUP: HeaderName = HeaderName::from_static("impersonate-group");
pub static IMPERSONATE_UID: HeaderName = HeaderName::from_static("impersonate-uid");

/// `Impersonate-User`, `Impersonate-Uid` and one `Impersonate-Group` per
/// group. (Extra fields are not passed: impersonating them needs a
/// permission per key.)
pub fn impersonation_headers(user: &UserInfo) -> Result<Vec<(HeaderName, HeaderValue)>, ApiError> {
    let value = |what: &str, s: &str| {
        HeaderValue::from_bytes(s.as_bytes()).map_err(|_| {
            ApiError::unauthorized(format!(
                "the {what} of the token's user contains characters that cannot be sent to Kubernetes in a header"
            ))
        })
    };
    let username = user.username.as_deref().unwrap_or_default();
    let mut out = vec![(IMPERSONATE_USER.clone(), value("username", username)?)];
    if let Some(uid) = user.uid.as_deref().filter(|u| !u.is_empty()) {
        out.push((IMPERSONATE_UID.clone(), value("uid", uid)?));
    }
    for g in user.groups.iter().flatten() {
        out.push((IMPERSONATE_GROUP.clone(), value("group", g)?));
    }
    Ok(out)
}

/// A client that sends every request through `base` with `headers` added.
pub fn impersonating(base: &Client, headers: Vec<(HeaderName, HeaderValue)>) -> Client {
    let ns = base.default_namespace().to_string();
    let base = base.clone();
    let headers = Arc::new(headers);
    Client::new(
        tower::service_fn(move |mut req: http::Request<kube::client::Body>| {
            let base = base.clone();
            let headers = headers.clone();
            async move {
                let h = req.headers_mut();
                for name in [&IMPERSONATE_USER, &IMPERSONATE_GROUP, &IMPERSONATE_UID] {
                    h.remove(name);
                }
                for (name, value) in headers.iter() {
                    h.append(name.clone(), value.clone());
                }
                base.send(req).await
            }
        }),
        ns,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_entries_expire() {
        let c = TtlCache::new(10);
        let t0 = Instant::now();
        c.insert(1, "a", Duration::from_secs(30), t0);
        assert_eq!(c.get(&1, t0 + Duration::from_secs(29)), Some("a"));
        assert_eq!(c.get(&1, t0 + Duration::from_secs(30)), None);
        assert!(c.is_empty(), "an expired entry is dropped when seen");
        c.insert(2, "b", Duration::ZERO, t0);
        assert_eq!(c.get(&2, t0), None, "a zero TTL is not cached");
    }

    #[test]
    fn cache_is_bounded() {
        let c = TtlCache::new(3);
        let t0 = Instant::now();
        for i in 0..3u32 {
            c.insert(i, i, Duration::from_secs(10 + u64::from(i)), t0);
        }
        c.insert(9, 9, Duration::from_secs(60), t0);
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&0, t0), None, "the entry closest to expiring goes");
        assert_eq!(c.get(&9, t0), Some(9));
        // Expired entries go before live ones.
        let later = t0 + Duration::from_secs(11);
        c.insert(10, 10, Duration::from_secs(60), later);
        assert_eq!(c.get(&2, later), Some(2));
        assert_eq!(c.get(&1, later), None);
        assert!(c.len() <= 3);
    }

    #[test]
    fn ttl_never_outlives_the_token() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let d = Duration::from_secs(30);
        assert_eq!(ttl(d, None, now), d);
        assert_eq!(
            ttl(d, Some(now + Duration::from_secs(10)), now),
            Duration::from_secs(10)
        );
        assert_eq!(ttl(d, Some(now + Duration::from_secs(100)), now), d);
        assert_eq!(
            ttl(d, Some(now - Duration::from_secs(1)), now),
            Duration::ZERO
        );
    }

    #[test]
    fn jwt_expiry_is_read() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"exp":1700000000,"sub":"x"}"#)
        );
        assert_eq!(
            token_expiry(&token),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(token_expiry("opaque-static-token"), None);
        assert_eq!(token_expiry("a.b.c"), None);
    }

    #[test]
    fn bearer_tokens_are_required() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h).unwrap_err().code(), 401);
        h.insert(header::AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert!(
            bearer(&h)
                .unwrap_err()
                .0
                .error
                .message
                .contains("not a bearer token")
        );
        h.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&h).unwrap_err().code(), 401);
        h.insert(header::AUTHORIZATION, "Bearer abc.def".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "abc.def");
        h.insert(header::AUTHORIZATION, "bearer xyz".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), "xyz");
    }

    #[test]
    fn impersonation_has_one_header_per_group() {
        let user = UserInfo {
            username: Some("system:serviceaccount:team:alice".into()),
            uid: Some("1234".into()),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                "system:authenticated".into(),
            ]),
            extra: None,
        };
        let h = impersonation_headers(&user).unwrap();
        let names: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("impersonate-user", "system:serviceaccount:team:alice"),
                ("impersonate-uid", "1234"),
                ("impersonate-group", "system:serviceaccounts"),
                ("impersonate-group", "system:authenticated"),
            ]
        );
        let bad = UserInfo {
            username: Some("a\r\nInjected: x".into()),
            ..Default::default()
        };
        assert_eq!(impersonation_headers(&bad).unwrap_err().code(), 401);
    }
}
