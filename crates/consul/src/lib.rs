//! A thin typed client for the parts of Consul's HTTP API Mahler uses: the
//! catalog of one node, health checks, `/v1/txn`, config entries
//! (service-intentions, api-gateway, http-route), intention checks, and the
//! agent calls the tests and benchmarks compare against. On hyper and
//! rustls, the HTTP stack the rest of Mahler already builds (no second
//! one). consulrs was not extended: docs/consul.md says why.
//!
//! Knows nothing of Kubernetes or Mahler; `mahler-core` decides what to
//! write, the controller drives this client.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// How to reach Consul.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `http://host:port` or `https://host:port`.
    pub address: String,
    /// The datacenter every call names (None: the agent's own).
    pub datacenter: Option<String>,
    /// A PEM CA bundle for https (None: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Per request (blocking queries add their wait).
    pub timeout: Duration,
}

/// What a call to Consul can end in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Consul at {address}: {message}")]
    Unreachable { address: String, message: String },
    #[error("Consul did not answer within {0:?}")]
    Timeout(Duration),
    /// 401/403: the ACL token is missing, unknown or lacks a permission.
    #[error("Consul refused the ACL token (HTTP {status}): {message}")]
    Forbidden { status: u16, message: String },
    /// Another 4xx: what was sent is wrong (a name, a config entry).
    #[error("Consul rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("Consul failed (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    #[error("unexpected answer from Consul: {0}")]
    Decode(String),
    #[error("Consul TLS settings: {0}")]
    Tls(String),
}

impl Error {
    /// Low-cardinality label for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Unreachable { .. } | Error::Timeout(_) | Error::Server { .. } => {
                "ConsulUnavailable"
            }
            Error::Forbidden { .. } => "ConsulTokenRejected",
            Error::Rejected { .. } => "ConsulRejected",
            Error::Decode(_) => "ConsulUnavailable",
            Error::Tls(_) => "ConsulTLSInvalid",
        }
    }
}

/// A Consul client: cheap to clone, one connection pool.
#[derive(Clone)]
pub struct Client {
    /// Or why it cannot be built (bad TLS files): every call says so.
    http: Result<HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>, String>,
    config: Arc<Config>,
    token: Arc<parking_lot_free::TokenCell>,
    calls: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

/// A tiny lock-free-enough token holder (a std Mutex; read per request).
mod parking_lot_free {
    use std::sync::Mutex;
    #[derive(Default)]
    pub struct TokenCell(Mutex<Option<String>>);
    impl TokenCell {
        pub fn get(&self) -> Option<String> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
        pub fn set(&self, token: Option<String>) {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = token;
        }
    }
}

impl Client {
    /// A client for `config`. TLS files that cannot be read do not fail
    /// here: every call returns [`Error::Tls`] saying why, so a caller can
    /// report it where users look (and pick up fixed files on restart).
    pub fn new(config: Config) -> Result<Self, Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = tls_config(&config)
            .map_err(|e| match e {
                Error::Tls(message) => message,
                other => other.to_string(),
            })
            .map(|tls| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(Duration::from_secs(5)));
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                HyperClient::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector)
            });
        Ok(Client {
            http,
            config: Arc::new(Config {
                address: config.address.trim_end_matches('/').to_string(),
                timeout: if config.timeout.is_zero() {
                    Duration::from_secs(10)
                } else {
                    config.timeout
                },
                ..config
            }),
            token: Arc::default(),
            calls: Arc::default(),
            writes: Arc::default(),
        })
    }

    /// The ACL token sent with every call from now on (`X-Consul-Token`).
    pub fn set_token(&self, token: Option<String>) {
        self.token.set(token);
    }

    pub fn address(&self) -> &str {
        &self.config.address
    }

    /// HTTP calls made so far (reads and writes).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Writing calls made so far (txn, config PUT/DELETE, registrations).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(StatusCode, Option<u64>, Bytes), Error> {
        let mut uri = format!("{}{path}", self.config.address);
        let mut params: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        if let Some(dc) = &self.config.datacenter {
            params.push(("dc".into(), dc.clone()));
        }
        for (i, (k, v)) in params.iter().enumerate() {
            uri.push(if i == 0 { '?' } else { '&' });
            uri.push_str(k);
            uri.push('=');
            uri.push_str(&encode(v));
        }
        let writing = method != Method::GET;
        let mut request = Request::builder().method(method).uri(&uri);
        if let Some(token) = self.token.get() {
            request = request.header("X-Consul-Token", token);
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Decode(format!("building {uri}: {e}")))?;
        self.calls.fetch_add(1, Ordering::Relaxed);
        if writing {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        let http = self.http.as_ref().map_err(|e| Error::Tls(e.clone()))?;
        let send = async {
            let response = http.request(request).await.map_err(|e| {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    message.push_str(": ");
                    message.push_str(&s.to_string());
                    source = s.source();
                }
                Error::Unreachable {
                    address: self.config.address.clone(),
                    message,
                }
            })?;
            let status = response.status();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| Error::Unreachable {
                    address: self.config.address.clone(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok::<_, Error>((status, index, body))
        };
        let (status, index, body) = tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| Error::Timeout(timeout))??;
        if status.is_success() {
            return Ok((status, index, body));
        }
        let message = String::from_utf8_lossy(&body).trim().to_string();
        let message = if message.len() > 500 {
            let mut end = 500;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &message[..end])
        } else {
            message
        };
        Err(match status.as_u16() {
            401 | 403 => Error::Forbidden {
                status: status.as_u16(),
                message,
            },
            s @ 400..=499 => Error::Rejected { status: s, message },
            s => Error::Server { status: s, message },
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<(T, Option<u64>), Error> {
        let (_, index, body) = self
            .call(Method::GET, path, query, None, self.config.timeout)
            .await?;
        let value =
            serde_json::from_slice(&body).map_err(|e| Error::Decode(format!("GET {path}: {e}")))?;
        Ok((value, index))
    }

    /// The raft leader's address (empty while there is none).
    pub async fn leader(&self) -> Result<String, Error> {
        Ok(self.get::<String>("/v1/status/leader", &[]).await?.0)
    }

    /// The node and its services (`node` is None when the node is not
    /// registered), with the catalog index. With `wait`, a blocking query: returns when
    /// the index moves past `index`, or after `wait`.
    pub async fn node_services(
        &self,
        node: &str,
        blocking: Option<(u64, Duration)>,
    ) -> Result<(NodeServices, u64), Error> {
        let mut query = Vec::new();
        let mut timeout = self.config.timeout;
        if let Some((index, wait)) = blocking {
            query.push(("index", index.to_string()));
            query.push(("wait", format!("{}s", wait.as_secs().max(1))));
            timeout += wait + wait / 16 + Duration::from_secs(1);
        }
        let path = format!("/v1/catalog/node-services/{}", encode(node));
        let (_, index, body) = self.call(Method::GET, &path, &query, None, timeout).await?;
        let services: NodeServices =
            serde_json::from_slice(&body).map_err(|e| Error::Decode(format!("GET {path}: {e}")))?;
        Ok((services, index.unwrap_or(0)))
    }

    /// Every check registered on `node`.
    pub async fn node_checks(&self, node: &str) -> Result<Vec<HealthCheck>, Error> {
        let path = format!("/v1/health/node/{}", encode(node));
        Ok(self.get::<Vec<HealthCheck>>(&path, &[]).await?.0)
    }

    /// The instances of a service with their checks (`passing`: only healthy).
    pub async fn health_service(
        &self,
        service: &str,
        passing: bool,
    ) -> Result<Vec<ServiceEntry>, Error> {
        let path = format!("/v1/health/service/{}", encode(service));
        let query = if passing {
            vec![("passing", "true".to_string())]
        } else {
            vec![]
        };
        Ok(self.get::<Vec<ServiceEntry>>(&path, &query).await?.0)
    }

    /// One transaction: every operation applies, or none does. At most 128
    /// operations (Consul 1.16).
    pub async fn txn(&self, ops: &[TxnOp]) -> Result<(), Error> {
        let body = serde_json::to_vec(ops).map_err(|e| Error::Decode(e.to_string()))?;
        match self
            .call(Method::PUT, "/v1/txn", &[], Some(body), self.config.timeout)
            .await
        {
            Ok(_) => Ok(()),
            // A rolled-back transaction answers 409 with the failed operations.
            Err(Error::Rejected {
                status: 409,
                message,
            }) => {
                let errors = serde_json::from_str::<TxnResponse>(&message)
                    .ok()
                    .map(|r| {
                        r.errors
                            .iter()
                            .map(|e| format!("operation {}: {}", e.op_index, e.what))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or(message);
                // ACL refusals inside a transaction come back as 409 too.
                if errors.contains("Permission denied") {
                    return Err(Error::Forbidden {
                        status: 403,
                        message: errors,
                    });
                }
                Err(Error::Rejected {
                    status: 409,
                    message: errors,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Every config entry of `kind`, as JSON (each has `Kind`, `Name`, `Meta`).
    pub async fn config_entries(&self, kind: &str) -> Result<Vec<serde_json::Value>, Error> {
        let path = format!("/v1/config/{}", encode(kind));
        let value: Option<Vec<serde_json::Value>> = self.get(&path, &[]).await?.0;
        Ok(value.unwrap_or_default())
    }

    /// One config entry, or None.
    pub async fn config_entry(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<serde_json::Value>, Error> {
        let path = format!("/v1/config/{}/{}", encode(kind), encode(name));
        match self.get(&path, &[]).await {
            Ok((value, _)) => Ok(Some(value)),
            Err(Error::Rejected { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes a config entry (its `Kind` and `Name` say which).
    pub async fn put_config_entry(&self, entry: &serde_json::Value) -> Result<(), Error> {
        let body = serde_json::to_vec(entry).map_err(|e| Error::Decode(e.to_string()))?;
        let (_, _, answer) = self
            .call(
                Method::PUT,
                "/v1/config",
                &[],
                Some(body),
                self.config.timeout,
            )
            .await?;
        match answer.as_ref() {
            b"true" | b"true\n" => Ok(()),
            other => Err(Error::Rejected {
                status: 200,
                message: String::from_utf8_lossy(other).into_owned(),
            }),
        }
    }

    pub async fn delete_config_entry(&self, kind: &str, name: &str) -> Result<(), Error> {
        let path = format!("/v1/config/{}/{}", encode(kind), encode(name));
        self.call(Method::DELETE, &path, &[], None, self.config.timeout)
            .await?;
        Ok(())
    }

    /// Whether Consul's intentions let `source` connect to `destination`.
    pub async fn intention_allowed(&self, source: &str, destination: &str) -> Result<bool, Error> {
        #[derive(Deserialize)]
        struct Check {
            #[serde(rename = "Allowed")]
            allowed: bool,
        }
        let query = [
            ("source", source.to_string()),
            ("destination", destination.to_string()),
        ];
        let (check, _) = self
            .get::<Check>("/v1/connect/intentions/check", &query)
            .await?;
        Ok(check.allowed)
    }

    /// Registers one service with the local agent (how most integrations
    /// register: one call per instance). For comparisons and tests.
    pub async fn agent_register(&self, service: &serde_json::Value) -> Result<(), Error> {
        let body = serde_json::to_vec(service).map_err(|e| Error::Decode(e.to_string()))?;
        self.call(
            Method::PUT,
            "/v1/agent/service/register",
            &[],
            Some(body),
            self.config.timeout,
        )
        .await?;
        Ok(())
    }

    pub async fn agent_deregister(&self, id: &str) -> Result<(), Error> {
        let path = format!("/v1/agent/service/deregister/{}", encode(id));
        self.call(Method::PUT, &path, &[], None, self.config.timeout)
            .await?;
        Ok(())
    }

    /// The raft log's last index (`/v1/agent/self`): moves on every write.
    pub async fn raft_last_index(&self) -> Result<u64, Error> {
        let (me, _): (serde_json::Value, _) = self.get("/v1/agent/self", &[]).await?;
        me.pointer("/Stats/raft/last_log_index")
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Decode("no Stats.raft.last_log_index in /v1/agent/self".into()))
    }
}

fn tls_config(config: &Config) -> Result<rustls::ClientConfig, Error> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .map_err(|e| Error::Tls(format!("CA file {}: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Tls(format!("CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Tls(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| Error::Tls(format!("CA file {}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_roots() {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match &config.client_cert {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| Error::Tls(format!("client certificate {}: {e}", cert.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| Error::Tls(format!("client certificate {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Tls(format!("client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(format!("client certificate: {e}")))
        }
    }
}

/// The system's trust roots (those that load; without any, only a CA file
/// makes https work, and the first call's error says which certificate
/// failed).
fn rustls_native_roots() -> Vec<rustls_pki_types::CertificateDer<'static>> {
    rustls_native_certs::load_native_certs().certs
}

/// Percent-encodes a path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `/v1/catalog/node-services/:node`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeServices {
    /// Null when the node is not registered.
    #[serde(default)]
    pub node: Option<CatalogNode>,
    #[serde(default, deserialize_with = "null_vec")]
    pub services: Vec<AgentService>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CatalogNode {
    pub node: String,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(default, deserialize_with = "null_map")]
    pub meta: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentService {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    #[serde(default, deserialize_with = "null_vec")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub port: u16,
    #[serde(default, deserialize_with = "null_map")]
    pub meta: BTreeMap<String, String>,
}

/// `/v1/health/node/:node` and `/v1/health/service/:service` checks.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheck {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub output: String,
    #[serde(rename = "ServiceID", default)]
    pub service_id: String,
    #[serde(default)]
    pub service_name: String,
}

/// `/v1/health/service/:service`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceEntry {
    pub node: CatalogNode,
    pub service: AgentService,
    #[serde(default, deserialize_with = "null_vec")]
    pub checks: Vec<HealthCheck>,
}

/// One `/v1/txn` operation (only the catalog ones Mahler sends).
#[derive(Clone, Debug, Serialize)]
pub enum TxnOp {
    Node(TxnNode),
    Service(TxnService),
    Check(TxnCheck),
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnNode {
    pub verb: &'static str,
    pub node: CatalogNode,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnService {
    pub verb: &'static str,
    pub node: String,
    pub service: AgentService,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnCheck {
    pub verb: &'static str,
    pub check: TxnCheckBody,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TxnCheckBody {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
    #[serde(rename = "ServiceID", skip_serializing_if = "String::is_empty")]
    pub service_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    #[serde(default, deserialize_with = "null_vec")]
    errors: Vec<TxnError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnError {
    #[serde(rename = "OpIndex")]
    op_index: usize,
    what: String,
}

fn null_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    Ok(Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default())
}

fn null_vec<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_operations_have_consuls_shape() {
        let ops = vec![
            TxnOp::Node(TxnNode {
                verb: "set",
                node: CatalogNode {
                    node: "mahler".into(),
                    address: "127.0.0.1".into(),
                    ..Default::default()
                },
            }),
            TxnOp::Check(TxnCheck {
                verb: "delete",
                check: TxnCheckBody {
                    node: "mahler".into(),
                    check_id: "a/b/c/ready".into(),
                    ..Default::default()
                },
            }),
        ];
        let json = serde_json::to_value(&ops).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {"Node": {"Verb": "set", "Node": {"Node": "mahler", "Address": "127.0.0.1", "Meta": {}}}},
                {"Check": {"Verb": "delete", "Check": {"Node": "mahler", "CheckID": "a/b/c/ready"}}}
            ])
        );
    }

    #[test]
    fn null_fields_decode_as_empty() {
        let s: AgentService = serde_json::from_value(serde_json::json!({
            "ID": "x", "Service": "api", "Tags": null, "Meta": null, "Address": "", "Port": 0
        }))
        .unwrap();
        assert!(s.tags.is_empty() && s.meta.is_empty());
        assert_eq!(encode("shop/api pod"), "shop%2Fapi%20pod");
    }
}
