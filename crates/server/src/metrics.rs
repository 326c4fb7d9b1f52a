//! `/metrics` (prometheus-client): requests by matched route, method and
//! status; latency by route; TokenReview calls and token-cache hits.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `authenticated`, `refused` or `error` (TokenReview calls);
    /// `accepted` or `refused` (cache hits).
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub token_reviews: Family<ResultLabels, Counter>,
    pub token_cache_hits: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mahler_api");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by matched route, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by matched route (server-sent event streams excluded)",
            latency.clone(),
        );
        let token_reviews = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_reviews",
            "TokenReview calls to the Kubernetes API, by result",
            token_reviews.clone(),
        );
        let token_cache_hits = Family::<ResultLabels, Counter>::default();
        registry.register(
            "token_cache_hits",
            "Requests whose bearer token was found in the token cache, by cached verdict",
            token_cache_hits.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            token_reviews,
            token_cache_hits,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests_and_token_metrics() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                route: "/api/v1/projects/{name}".into(),
                method: "GET".into(),
                status: 200,
            })
            .inc();
        m.token_reviews
            .get_or_create(&ResultLabels {
                result: "authenticated",
            })
            .inc();
        let text = m.encode();
        assert!(text.contains(r#"mahler_api_http_requests_total{route="/api/v1/projects/{name}",method="GET",status="200"} 1"#), "{text}");
        assert!(
            text.contains(r#"mahler_api_token_reviews_total{result="authenticated"} 1"#),
            "{text}"
        );
    }
}
