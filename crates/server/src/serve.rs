//! Serving: flags, TLS (rustls with the ring provider), plain HTTP only on
//! a loopback address, and graceful shutdown (in-flight requests finish,
//! event streams end, then the connections close).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Flags of `mahler-server` (each also a `MAHLER_API_*` variable).
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on. Plain HTTP (no --tls-cert) only on a loopback address.
    #[arg(long, env = "MAHLER_API_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain for TLS (with --tls-key).
    #[arg(long, env = "MAHLER_API_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "MAHLER_API_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, env = "MAHLER_API_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Longest a request may take (not the event streams), e.g. 30s, 500ms, 2m.
    #[arg(long, env = "MAHLER_API_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Longest an event stream runs; it also ends when the token expires
    /// or the watch is refused (401/403). Clients reconnect.
    #[arg(long, env = "MAHLER_API_STREAM_MAX_DURATION", default_value = "5m", value_parser = parse_duration)]
    pub stream_max_duration: Duration,
    /// How long shutdown waits for in-flight requests.
    #[arg(long, env = "MAHLER_API_SHUTDOWN_TIMEOUT", default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Bearer-token verdicts kept at most.
    #[arg(long, env = "MAHLER_API_TOKEN_CACHE_SIZE", default_value_t = 10_000)]
    pub token_cache_size: usize,
    /// How long an accepted token is trusted without a new TokenReview (never past its expiry).
    #[arg(long, env = "MAHLER_API_TOKEN_CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub token_cache_ttl: Duration,
    /// How long a refused token is refused without a new TokenReview.
    #[arg(long, env = "MAHLER_API_TOKEN_REFUSED_TTL", default_value = "5s", value_parser = parse_duration)]
    pub token_refused_ttl: Duration,
    /// Log format: json or text.
    #[arg(long, env = "MAHLER_API_LOG_FORMAT", default_value = "text", value_parser = ["json", "text"])]
    pub log_format: String,
    /// error, warn, info, debug or trace (or a full RUST_LOG filter).
    #[arg(long, env = "MAHLER_API_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// `30s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit is one of ms, s, m, h")),
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 86_400.0 * 365.0 {
        return Err(format!("{s:?} is not a positive duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve plain HTTP on {0}: bearer tokens would cross the network unencrypted. Pass --tls-cert and --tls-key (MAHLER_API_TLS_CERT, MAHLER_API_TLS_KEY), or listen on a loopback address such as 127.0.0.1:8443"
    )]
    PlainHttpNotLoopback(SocketAddr),
    #[error("reading {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("the TLS certificate and key do not make a TLS configuration: {0}")]
    TlsConfig(rustls::Error),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
}

/// The TLS configuration, or None for plain HTTP (loopback only).
pub fn tls_config(args: &ServeArgs) -> Result<Option<Arc<ServerConfig>>, ServeError> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        if !args.listen.ip().is_loopback() {
            return Err(ServeError::PlainHttpNotLoopback(args.listen));
        }
        return Ok(None);
    };
    load_tls(cert, key).map(Some)
}

pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ServeError> {
    let tls_err = |path: &Path, message: String| ServeError::Tls {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| tls_err(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(tls_err(cert, "no PEM certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(ServeError::TlsConfig)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(ServeError::TlsConfig)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` until `shutdown` turns true, then lets in-flight
/// requests finish for up to `grace`.
pub async fn run(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let builder = {
                let mut b = http1::Builder::new();
                b.timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(30));
                b
            };
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "connection ended");
                    }
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!("in-flight requests did not finish within {grace:?}; closing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: ServeArgs,
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let a = T::try_parse_from(["t"]).unwrap().a;
        assert_eq!(a.listen.to_string(), "127.0.0.1:8443");
        assert_eq!(a.body_limit, 1 << 20);
        assert!(tls_config(&a).unwrap().is_none());
        let a = T::try_parse_from(["t", "--listen", "0.0.0.0:8443"])
            .unwrap()
            .a;
        let e = tls_config(&a).unwrap_err().to_string();
        assert!(
            e.starts_with("refusing to serve plain HTTP on 0.0.0.0:8443"),
            "{e}"
        );
        assert!(
            T::try_parse_from(["t", "--tls-cert", "c.pem"]).is_err(),
            "a cert needs a key"
        );
    }
}
