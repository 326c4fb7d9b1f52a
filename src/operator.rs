//! Process wiring for `mahler-operator`: flags, logging, the HTTP endpoints
//! (`/metrics`, `/healthz`, `/readyz`), waiting for the CRDs, leader election
//! on a Lease, and graceful shutdown. No reconcile logic lives here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use kube::api::{ApiResource, DynamicObject, ListParams};
use kube::{Api, Client};
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;
use tracing::{error, info, warn};

use mahler_controller::metrics::Metrics;
use mahler_controller::terraform_identity::TerraformIdentity;
use mahler_controller::{self as controller, Settings};
use mahler_engine::{Engine, EngineConfig};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "mahler-operator",
    version,
    about = "Runs the Mahler controllers"
)]
pub struct Args {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "MAHLER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Elect one active replica through a Lease in --lease-namespace (the
    /// Helm chart turns it on; off by default, so a single operator run by
    /// hand needs no namespace of its own).
    #[arg(long, env = "MAHLER_LEADER_ELECT", default_value_t = false, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mahler-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "MAHLER_LEASE_NAME", default_value = "mahler-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds the Lease is held without renewal before another replica takes over.
    #[arg(long, env = "MAHLER_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Reconciles run in parallel, per kind.
    #[arg(long, env = "MAHLER_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Seconds between drift checks of a settled object.
    #[arg(long, env = "MAHLER_RESYNC_SECONDS", default_value_t = 600)]
    pub resync_seconds: u64,
    /// DNS suffix of in-cluster Service names.
    #[arg(long, env = "MAHLER_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The OpenTofu binary template Services run.
    #[arg(long, env = "MAHLER_TOFU", default_value = "tofu")]
    pub tofu: std::path::PathBuf,
    /// Filesystem mirror of Terraform providers (offline `tofu init`).
    #[arg(long, env = "MAHLER_PROVIDER_MIRROR")]
    pub provider_mirror: Option<std::path::PathBuf>,
    /// Where OpenTofu workspaces, git checkouts and the CLI config live.
    #[arg(long, env = "MAHLER_TOFU_WORKDIR", default_value = "/tmp/mahler-tofu")]
    pub tofu_workdir: std::path::PathBuf,
    /// OpenTofu runs at once, operator-wide.
    #[arg(long, env = "MAHLER_TOFU_PARALLELISM", default_value_t = 4)]
    pub tofu_parallelism: usize,
    /// Seconds a single OpenTofu command may run before it is interrupted.
    #[arg(long, env = "MAHLER_TOFU_TIMEOUT_SECONDS", default_value_t = 900)]
    pub tofu_timeout_seconds: u64,
    /// Default drift-check interval of template Services (e.g. 30m, 1h; 0s: off).
    #[arg(long, env = "MAHLER_DRIFT_CHECK_INTERVAL", default_value = "1h")]
    pub drift_check_interval: String,
    /// Run template Services' OpenTofu as a ServiceAccount of each
    /// environment's namespace bound only there to this ClusterRole (the
    /// chart's `<release>-terraform`), instead of as the operator.
    #[arg(long, env = "MAHLER_TERRAFORM_ROLE")]
    pub terraform_role: Option<String>,
    /// The ServiceAccount created in each environment namespace for OpenTofu.
    #[arg(
        long,
        env = "MAHLER_TERRAFORM_SERVICE_ACCOUNT",
        default_value = "mahler-terraform"
    )]
    pub terraform_service_account: String,
    /// Disable the Terraform engine (template Services report EngineUnavailable).
    #[arg(long, env = "MAHLER_TERRAFORM_DISABLED", default_value_t = false, action = clap::ArgAction::Set)]
    pub terraform_disabled: bool,
    /// Consul's HTTP address (`http://host:8500` or `https://host:8501`).
    /// Unset: nothing Consul-related runs (docs/consul.md).
    #[arg(long, env = "MAHLER_CONSUL_ADDRESS")]
    pub consul_address: Option<String>,
    /// The Consul datacenter (default: the agent's own).
    #[arg(long, env = "MAHLER_CONSUL_DATACENTER")]
    pub consul_datacenter: Option<String>,
    /// A file holding the Consul ACL token (the chart mounts a Secret);
    /// read at every sync, so a rotated token is picked up.
    #[arg(long, env = "MAHLER_CONSUL_TOKEN_FILE")]
    pub consul_token_file: Option<std::path::PathBuf>,
    /// PEM CA bundle that signs Consul's HTTPS certificate.
    #[arg(long, env = "MAHLER_CONSUL_CA_FILE")]
    pub consul_ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate for Consul's mutual TLS (with --consul-client-key).
    #[arg(
        long,
        env = "MAHLER_CONSUL_CLIENT_CERT",
        requires = "consul_client_key"
    )]
    pub consul_client_cert: Option<std::path::PathBuf>,
    /// PEM key of --consul-client-cert.
    #[arg(
        long,
        env = "MAHLER_CONSUL_CLIENT_KEY",
        requires = "consul_client_cert"
    )]
    pub consul_client_key: Option<std::path::PathBuf>,
    /// The catalog node Mahler registers its instances on; one per cluster
    /// sharing a Consul datacenter.
    #[arg(long, env = "MAHLER_CONSUL_NODE", default_value = "mahler")]
    pub consul_node: String,
    /// The address of that node.
    #[arg(long, env = "MAHLER_CONSUL_NODE_ADDRESS", default_value = "127.0.0.1")]
    pub consul_node_address: String,
    /// The Consul API gateway `spec.expose` routes attach to ("": none, and
    /// `expose` is refused).
    #[arg(long, env = "MAHLER_CONSUL_GATEWAY", default_value = "mahler-gateway")]
    pub consul_gateway: String,
    /// The port of that gateway's HTTP listener.
    #[arg(long, env = "MAHLER_CONSUL_GATEWAY_PORT", default_value_t = 8080)]
    pub consul_gateway_port: u16,
    /// Consul's DNS domain, for the injected `<PREFIX>_CONSUL_HOST`.
    #[arg(long, env = "MAHLER_CONSUL_DNS_DOMAIN", default_value = "consul")]
    pub consul_dns_domain: String,
    /// Seconds between full Consul syncs when nothing pokes one.
    #[arg(long, env = "MAHLER_CONSUL_RESYNC_SECONDS", default_value_t = 60)]
    pub consul_resync_seconds: u64,
    /// The image of environments' OpenTelemetry collectors
    /// (docs/telemetry.md).
    #[arg(
        long,
        env = "MAHLER_COLLECTOR_IMAGE",
        default_value = "otel/opentelemetry-collector-contrib:0.165.0"
    )]
    pub collector_image: String,
    /// The ClusterRole bound to each collector's ServiceAccount in its
    /// namespace (the chart's `<release>-collector`: read pods and
    /// ReplicaSets for k8s_attributes).
    #[arg(
        long,
        env = "MAHLER_COLLECTOR_ROLE",
        default_value = "mahler-collector"
    )]
    pub collector_role: String,
    /// The collector binary that validates rendered configs
    /// (`otelcol validate`) before they are rolled out.
    #[arg(long, env = "MAHLER_OTELCOL", default_value = "otelcol")]
    pub otelcol: std::path::PathBuf,
    /// Collect environments' pod logs with a node agent (a DaemonSet of the
    /// collector image) in this namespace; unset, pod logs are not
    /// collected. The namespace must admit hostPath pods (docs/telemetry.md,
    /// "Logs").
    #[arg(long, env = "MAHLER_LOG_AGENT_NAMESPACE")]
    pub log_agent_namespace: Option<String>,
    /// Export the operator's own traces (one span per reconcile, tofu runs
    /// and commands as its children) over OTLP/gRPC to this endpoint, e.g.
    /// http://otel-collector.observability:4317. Unset: no traces. The SDK's
    /// OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG and
    /// OTEL_RESOURCE_ATTRIBUTES apply (docs/telemetry.md).
    #[arg(long, env = "MAHLER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log format.
    #[arg(long, env = "MAHLER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace) or a full filter like
    /// `info,mahler=debug`. RUST_LOG, when set, wins.
    #[arg(long, env = "MAHLER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone)]
struct Health {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// The operator's trace export, flushed by [`Tracing::shutdown`].
pub struct Tracing(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Tracing {
    /// Exports the spans still buffered, waiting at most 5 s (the SDK's
    /// own shutdown ignores its timeout, so it runs on a thread of its own).
    pub fn shutdown(self) {
        let Some(provider) = self.0 else { return };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(provider.shutdown());
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("mahler-operator: flushing traces: {error}"),
            Err(_) => eprintln!("mahler-operator: flushing traces: gave up after 5s"),
        }
    }
}

/// An OTLP/gRPC trace pipeline to `endpoint`, batched on the tokio runtime.
fn tracer_provider(endpoint: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, Error> {
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    if !endpoint.starts_with("http://") {
        return Err(Error::Otlp(format!(
            "--otlp-endpoint {endpoint}: only plain http:// endpoints are supported yet (TLS is not); send to a collector on the cluster network, e.g. http://mahler-collector.<namespace>.svc:4317"
        )));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| Error::Otlp(format!("--otlp-endpoint {endpoint}: {e}")))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("mahler-operator")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build(),
        )
        .with_resource(resource)
        .build())
}

/// Logging to stderr, and traces over OTLP with `--otlp-endpoint`. A bare
/// level quiets the chatty client crates to warn; a filter with directives
/// of its own is taken as written. Traces carry Mahler's spans at info and
/// above, whatever the log level. Call inside the tokio runtime.
pub fn init_logging(args: &Args) -> Result<Tracing, Error> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let rust_log = std::env::var("RUST_LOG").ok().filter(|f| !f.is_empty());
    let source = if rust_log.is_some() {
        "RUST_LOG"
    } else {
        "--log-level (MAHLER_LOG_LEVEL)"
    };
    let directives = match rust_log {
        Some(filter) => filter,
        None if args.log_level.contains(['=', ',']) => args.log_level.clone(),
        // kube_client logs each failed request itself; the operator reports
        // those errors with their context, once.
        None => format!(
            "{},kube=warn,kube_client=off,kube_lease_manager=warn",
            args.log_level
        ),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .map_err(|e| Error::LogLevel(format!("{source} {directives:?}: {e}")))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let fmt = if args.log_format == LogFormat::Json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let provider = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => Some(tracer_provider(endpoint)?),
        None => None,
    };
    let otel = provider.as_ref().map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        let spans =
            tracing_subscriber::filter::Targets::new().with_target("mahler", tracing::Level::INFO);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("mahler-operator"))
            .with_filter(spans)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .init();
    Ok(Tracing(provider))
}

/// Runs the operator until SIGTERM/SIGINT. Returns an error when leadership
/// is lost (the process should exit and be restarted as a standby).
pub async fn run(args: Args) -> Result<(), Error> {
    // Flags first: a bad value ends the start-up before anything is served.
    let drift_check_interval =
        mahler_core::terraform::parse_duration(&args.drift_check_interval)
            .ok_or_else(|| Error::DriftInterval(args.drift_check_interval.clone()))?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(signal_shutdown(shutdown_tx));

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .map_err(|source| Error::Bind {
            addr: args.metrics_addr,
            source,
        })?;
    info!(addr = %args.metrics_addr, "serving /metrics, /healthz, /readyz");
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(serve_ready))
        .with_state(Health {
            metrics: metrics.clone(),
            ready: ready.clone(),
        });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            error!(%error, "HTTP server stopped");
        }
    });

    let config = kube::Config::infer()
        .await
        .map_err(|e| Error::NoCluster(e.to_string()))?;
    let api_url = config.cluster_url.to_string();
    let terraform_identity = args.terraform_role.clone().map(|role| TerraformIdentity {
        role,
        service_account: args.terraform_service_account.clone(),
        host: api_url.trim_end_matches('/').to_string(),
        ca_pem: config.root_cert.as_ref().map(|certs| pem(certs)),
        insecure: config.accept_invalid_certs,
        // Every command of a job may take the whole timeout.
        token_seconds: (args.tofu_timeout_seconds.max(10) * 4).max(3600) as i64,
    });
    let client = Client::try_from(config).map_err(|e| Error::NoCluster(brief(&e)))?;
    if !wait_for_crds(&client, &api_url, shutdown_rx.clone()).await? {
        return Ok(());
    }
    ready.store(true, Ordering::Release);

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let settings = Settings {
        cluster_domain: args.cluster_domain.clone(),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        concurrency: args.concurrency.max(1),
        drift_check_interval: Some(drift_check_interval),
        terraform_identity,
        consul: consul_settings(&args),
        telemetry: mahler_controller::telemetry::TelemetrySettings {
            collector_image: args.collector_image.clone(),
            collector_cluster_role: args.collector_role.clone(),
            otelcol: args.otelcol.clone(),
            workdir: args.tofu_workdir.join("otelcol"),
            log_agent_namespace: args.log_agent_namespace.clone().filter(|n| !n.is_empty()),
        },
    };
    let engine = start_engine(&args, &client, &metrics).await;

    if !args.leader_elect {
        metrics.leader.set(1);
        controller::run(
            client,
            metrics,
            settings,
            identity,
            engine,
            until_true(shutdown_rx),
        )
        .await;
        return Ok(());
    }

    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_seconds.max(2))
        .with_grace((args.lease_seconds / 3).max(1))
        .with_field_manager(mahler_api::names::FIELD_MANAGER)
        .build()
        .await
        .map_err(|source| leader_election_error(&args, source))?;
    let (mut leader, lease_task) = lease.watch().await;
    info!(%identity, lease = %format!("{}/{}", args.lease_namespace, args.lease_name), "waiting to become leader");
    let mut shutdown = shutdown_rx.clone();
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => if changed.is_err() { return Err(Error::LeaderElectionStopped) },
            _ = shutdown.wait_for(|s| *s) => { drop(leader); let _ = lease_task.await; return Ok(()) }
        }
    }
    info!(%identity, "became leader");
    metrics.leader.set(1);

    let lost = Arc::new(AtomicBool::new(false));
    let stop = {
        let (mut leader, mut shutdown, lost) = (leader.clone(), shutdown_rx.clone(), lost.clone());
        async move {
            tokio::select! {
                _ = leader.wait_for(|l| !*l) => lost.store(true, Ordering::Release),
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    };
    controller::run(client, metrics.clone(), settings, identity, engine, stop).await;
    metrics.leader.set(0);
    drop(leader); // the lease task releases the Lease when its channel closes
    if let Ok(Err(error)) = lease_task.await {
        warn!(%error, "releasing the leader Lease");
    }
    if lost.load(Ordering::Acquire) {
        return Err(Error::LostLease);
    }
    Ok(())
}

/// Waits until every Mahler CRD is served (the chart installs them first;
/// by hand they may follow the operator). Returns false on shutdown. An API
/// server that refuses the operator ends the start-up with one line saying
/// what to do, and so does one that cannot be reached at the first try when
/// the operator runs by hand. In a pod, and for API errors such as 429 or
/// 5xx, it retries: the API server may be restarting.
async fn wait_for_crds(
    client: &Client,
    api_url: &str,
    mut shutdown: watch::Receiver<bool>,
) -> Result<bool, Error> {
    let mut reached = false;
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    loop {
        match missing_crds(client).await {
            Ok(missing) if missing.is_empty() => return Ok(true),
            Ok(missing) => {
                reached = true;
                error!(
                    missing = %missing.join(", "),
                    "Mahler CRDs are not installed; install them with `kubectl apply -f crds/` (or `kubectl apply -k manifests/`, or the Helm chart). Retrying in 5s"
                )
            }
            Err(kube::Error::Api(status)) if status.code == 401 || status.code == 403 => {
                return Err(Error::Forbidden(status.message.clone()));
            }
            Err(error) if !reached && !in_cluster && !matches!(error, kube::Error::Api(_)) => {
                return Err(Error::Unreachable {
                    url: api_url.to_string(),
                    error: brief(&error),
                });
            }
            Err(error) => {
                warn!(error = %brief(&error), "cannot reach the Kubernetes API; retrying in 5s")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait_for(|s| *s) => return Ok(false),
        }
    }
}

/// The Consul settings from the flags (None without --consul-address).
fn consul_settings(args: &Args) -> Option<mahler_controller::consul::ConsulSettings> {
    let address = args.consul_address.clone().filter(|a| !a.is_empty())?;
    info!(%address, node = %args.consul_node, "Consul is on");
    Some(mahler_controller::consul::ConsulSettings {
        client: mahler_consul::Config {
            address,
            datacenter: args.consul_datacenter.clone(),
            ca_file: args.consul_ca_file.clone(),
            client_cert: args
                .consul_client_cert
                .clone()
                .zip(args.consul_client_key.clone()),
            timeout: Duration::from_secs(10),
        },
        token_file: args.consul_token_file.clone(),
        node: args.consul_node.clone(),
        node_address: args.consul_node_address.clone(),
        gateway: (!args.consul_gateway.is_empty())
            .then(|| (args.consul_gateway.clone(), args.consul_gateway_port)),
        dns_domain: args.consul_dns_domain.clone(),
        resync: Duration::from_secs(args.consul_resync_seconds.max(1)),
    })
}

/// DER certificates as one PEM bundle.
fn pem(certs: &[Vec<u8>]) -> String {
    use base64::Engine as _;
    let mut out = String::new();
    for der in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// One line for a Kubernetes client error (the controllers' own helper).
pub use mahler_controller::kube_message as brief;

fn leader_election_error(args: &Args, source: kube_lease_manager::LeaseManagerError) -> Error {
    let lease = format!("{}/{}", args.lease_namespace, args.lease_name);
    match source {
        kube_lease_manager::LeaseManagerError::KubeError(kube::Error::Api(status))
            if status.code == 404 =>
        {
            Error::LeaseNamespace {
                namespace: args.lease_namespace.clone(),
            }
        }
        kube_lease_manager::LeaseManagerError::KubeError(kube::Error::Api(status))
            if status.code == 401 || status.code == 403 =>
        {
            Error::LeaseForbidden {
                lease,
                message: status.message.clone(),
            }
        }
        kube_lease_manager::LeaseManagerError::KubeError(error) => Error::LeaderElection {
            lease,
            error: brief(&error),
        },
        other => Error::LeaderElection {
            lease,
            error: other.to_string(),
        },
    }
}

/// The CRDs of every kind the controllers reconcile that the API server
/// does not serve.
async fn missing_crds(client: &Client) -> Result<Vec<String>, kube::Error> {
    let mut missing = Vec::new();
    let probe = ListParams::default().limit(1);
    for resource in controller::kinds::resources() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
        match api.list_metadata(&probe).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => missing.push(crd_name(&resource)),
            Err(e) => return Err(e),
        }
    }
    Ok(missing)
}

fn crd_name(resource: &ApiResource) -> String {
    format!("{}.{}", resource.plural, resource.group)
}

/// The Terraform engine, or why template Services cannot run.
async fn start_engine(
    args: &Args,
    client: &Client,
    metrics: &Arc<Metrics>,
) -> Result<Arc<Engine>, String> {
    if args.terraform_disabled {
        let why = "the operator was started without the Terraform engine (set MAHLER_TOFU and MAHLER_PROVIDER_MIRROR)";
        warn!(error = why, "template Services are disabled");
        return Err(why.to_string());
    }
    let cfg = EngineConfig {
        tofu: args.tofu.clone(),
        provider_mirror: args.provider_mirror.clone(),
        workdir: args.tofu_workdir.clone(),
        parallel: args.tofu_parallelism.max(1),
        timeout: Duration::from_secs(args.tofu_timeout_seconds.max(10)),
        kubeconfig: std::env::var_os("KUBECONFIG").map(std::path::PathBuf::from),
    };
    let observer: Arc<dyn mahler_engine::RunObserver> = metrics.clone();
    match Engine::new(cfg, controller::engine_cluster(client.clone()), observer).await {
        Ok(engine) => Ok(Arc::new(engine)),
        Err(error) => {
            warn!(%error, "template Services are disabled");
            Err(error.to_string())
        }
    }
}

async fn serve_metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

async fn serve_ready(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "waiting for CRDs")
    }
}

async fn signal_shutdown(tx: watch::Sender<bool>) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    info!("shutdown requested; finishing in-flight reconciles");
    let _ = tx.send(true);
}

async fn until_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "mahler".into());
    format!("{host}-{}", std::process::id())
}

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the OTLP trace exporter: {0}")]
    Otlp(String),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "no Kubernetes cluster to talk to ({0}); set KUBECONFIG or ~/.kube/config, or run the operator in a pod"
    )]
    NoCluster(String),
    #[error(
        "cannot reach the Kubernetes API at {url} ({error}); is the cluster running, and does KUBECONFIG point at it?"
    )]
    Unreachable { url: String, error: String },
    #[error(
        "the Kubernetes API refused the operator: {0}; give its identity the operator's ClusterRole (the Helm chart or `kubectl apply -k manifests/` do; see docs/install.md)"
    )]
    Forbidden(String),
    #[error(
        "leader election needs the namespace {namespace:?} for its Lease, and it does not exist; create it, set --lease-namespace (POD_NAMESPACE) to another, or run a single operator without --leader-elect"
    )]
    LeaseNamespace { namespace: String },
    #[error(
        "leader election may not use the Lease {lease}: {message}; grant the chart's leader-election Role in that namespace, or run a single operator without --leader-elect"
    )]
    LeaseForbidden { lease: String, message: String },
    #[error("{0}; use error, warn, info, debug or trace, or a filter like info,mahler=debug")]
    LogLevel(String),
    #[error(
        "--drift-check-interval (MAHLER_DRIFT_CHECK_INTERVAL) {0:?} is not a duration like 30m, 1h or 0s (s, m, h)"
    )]
    DriftInterval(String),
    #[error("leader election on Lease {lease}: {error}")]
    LeaderElection { lease: String, error: String },
    #[error("leader election stopped")]
    LeaderElectionStopped,
    #[error("lost the leader Lease; exiting so a standby can take over")]
    LostLease,
}
