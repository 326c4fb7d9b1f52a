//! `mahler-server`: Mahler's REST API (docs/api.md).
//! `mahler-server openapi` prints the OpenAPI document.

use std::sync::Arc;

use clap::{Parser, Subcommand};
use mahler_server::auth::{Authenticator, CacheConfig};
use mahler_server::metrics::Metrics;
use mahler_server::serve::{self, ServeArgs};
use mahler_server::{App, openapi, router};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "mahler-server",
    version,
    about = "Mahler's REST API: every call made to Kubernetes as the requesting user",
    after_help = "Example (a local test; plain HTTP on loopback only):\n  KUBECONFIG=server.kubeconfig mahler-server --listen 127.0.0.1:8443\n  curl -H \"Authorization: Bearer $(kubectl create token alice)\" http://127.0.0.1:8443/api/v1/projects"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Print the OpenAPI 3.1 document (docs/openapi.json: `make openapi`).
    Openapi,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        print!("{}", openapi::render());
        return std::process::ExitCode::SUCCESS;
    }
    let args = cli.serve;
    init_logging(&args);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("mahler-server: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(args: &ServeArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    let tls = serve::tls_config(&args)?;
    let base = kube::Client::try_default().await.map_err(|e| {
        format!("no Kubernetes client configuration (in-cluster or KUBECONFIG): {e}")
    })?;
    let metrics = Arc::new(Metrics::new());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let app = Arc::new(App {
        auth: Authenticator::new(
            base.clone(),
            CacheConfig {
                max_entries: args.token_cache_size,
                accepted_ttl: args.token_cache_ttl,
                refused_ttl: args.token_refused_ttl,
            },
            metrics.clone(),
        ),
        base,
        metrics,
        body_limit: args.body_limit,
        request_timeout: args.request_timeout,
        stream_max: args.stream_max_duration,
        shutdown: shutdown.clone(),
        openapi: openapi::render(),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| serve::ServeError::Listen(args.listen, e))?;
    tracing::info!(
        listen = %args.listen,
        tls = tls.is_some(),
        body_limit = args.body_limit,
        "mahler-server listening"
    );
    tokio::spawn(async move {
        signal().await;
        tracing::info!("signal received");
        let _ = stop.send(true);
    });
    serve::run(listener, tls, router(app), shutdown, args.shutdown_timeout).await;
    Ok(())
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
