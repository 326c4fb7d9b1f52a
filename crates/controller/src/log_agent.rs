//! The cluster's pod-log node agent (docs/telemetry.md, "Logs"): one
//! DaemonSet in the agent's namespace whose config lists every environment
//! with telemetry that exports logs ([`mahler_core::log_agent`]).
//!
//! One task owns it. Environment passes poke it; it renders the config from
//! the Environment cache and compares it with the ConfigMap and DaemonSet it
//! reads. Only a real change is validated (`otelcol validate`) and applied,
//! so a resync with nothing to do runs no process and writes nothing. With
//! no environment to read, the agent is removed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use mahler_api::Environment;
use mahler_core::environment::owns_namespace;
use mahler_core::log_agent::{self, AGENT_NAME, POD_LOG_ROOT};
use mahler_core::telemetry;
use mahler_engine::otelcol::ValidateError;

use super::{Context, Error, apply, valid_ref};

/// Pokes from environment passes, and what the last sync found.
#[derive(Default)]
pub struct LogAgent {
    poke: Notify,
    /// The sources of the last sync that found everything in place, and
    /// when: a poke with the same sources within [`RECHECK`] reads nothing.
    settled: parking_lot::Mutex<Option<(Vec<log_agent::LogSource>, std::time::Instant)>>,
}

/// How often the agent's objects are read back when nothing changed.
const RECHECK: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{}", .0.chain())]
    Write(#[from] Error),
    #[error("the agent's config was not applied, the running agent is kept: {0}")]
    Validate(ValidateError),
}

impl LogAgent {
    pub fn poke(&self) {
        self.poke.notify_one();
    }
}

/// Keeps the agent in `namespace` in line with the environments, until the
/// operator stops.
pub async fn run(ctx: Arc<Context>, namespace: String) {
    info!(%namespace, "pod-log agent sync started");
    let mut wait = Duration::ZERO;
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = ctx.telemetry.log_agent.poke.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        // Let a burst of environment passes land first.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sources = sources(&ctx);
        let settled = ctx.telemetry.log_agent.settled.lock().clone();
        if settled.is_some_and(|(s, at)| s == sources && at.elapsed() < RECHECK) {
            // Environment passes poke on every resync: the same sources,
            // checked less than a minute ago, need no reads.
            wait = RECHECK;
            continue;
        }
        match sync(&ctx, &namespace, &sources).await {
            Ok(n) => {
                backoff = Duration::from_secs(1);
                ctx.metrics.log_agent_sources.set(n as i64);
                *ctx.telemetry.log_agent.settled.lock() =
                    Some((sources, std::time::Instant::now()));
                wait = RECHECK;
            }
            Err(error) => {
                *ctx.telemetry.log_agent.settled.lock() = None;
                warn!(error = %error, retry_in = ?backoff, "pod-log agent sync failed");
                wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// The environments whose logs are collected: telemetry that exports logs,
/// not being deleted, their namespace there.
fn sources(ctx: &Context) -> Vec<log_agent::LogSource> {
    let envs: Vec<Environment> = ctx
        .caches
        .store::<Environment>()
        .state()
        .iter()
        .filter_map(|g| valid_ref(g).cloned())
        .filter(|e| e.meta().deletion_timestamp.is_none())
        .filter(|e| {
            ctx.caches
                .namespaces
                .get(&ObjectRef::new(&e.namespace_name()))
                .is_some_and(|ns| {
                    owns_namespace(e, &ns) && ns.metadata.deletion_timestamp.is_none()
                })
        })
        .collect();
    log_agent::sources(&envs, &ctx.settings.cluster_domain)
}

/// One pass: returns how many environments the agent reads.
async fn sync(
    ctx: &Context,
    namespace: &str,
    sources: &[log_agent::LogSource],
) -> Result<usize, SyncError> {
    let daemon_sets: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let ours = |labels: &std::collections::BTreeMap<String, String>| {
        labels
            .get(mahler_api::names::MANAGED_BY.0)
            .map(String::as_str)
            == Some(mahler_api::names::MANAGED_BY.1)
    };
    let observed_ds = daemon_sets.get_opt(AGENT_NAME).await.map_err(Error::Kube)?;
    let observed_cm = config_maps.get_opt(AGENT_NAME).await.map_err(Error::Kube)?;
    let observed_sa = accounts.get_opt(AGENT_NAME).await.map_err(Error::Kube)?;
    if [
        observed_ds.as_ref().map(|d| d.labels()),
        observed_cm.as_ref().map(|c| c.labels()),
        observed_sa.as_ref().map(|a| a.labels()),
    ]
    .into_iter()
    .flatten()
    .any(|l| !ours(l))
    {
        warn!(%namespace, "a DaemonSet, ConfigMap or ServiceAccount named {AGENT_NAME} there is not Mahler's; pod logs are not collected");
        return Ok(0);
    }
    if sources.is_empty() {
        if observed_ds.is_some() {
            apply::delete_named::<DaemonSet>(ctx, Some(namespace), AGENT_NAME).await?;
        }
        if observed_cm.is_some() {
            apply::delete_named::<ConfigMap>(ctx, Some(namespace), AGENT_NAME).await?;
        }
        if observed_sa.is_some() {
            apply::delete_named::<ServiceAccount>(ctx, Some(namespace), AGENT_NAME).await?;
        }
        return Ok(0);
    }
    let yaml = telemetry::config_yaml(&log_agent::render_config(sources, POD_LOG_ROOT));
    let agent = log_agent::desired_agent(namespace, &ctx.telemetry.settings.collector_image, &yaml);
    let cm_observed = apply::whole(observed_cm.as_ref());
    let ds_observed = apply::whole(observed_ds.as_ref());
    let sa_observed = apply::whole(observed_sa.as_ref());
    if !apply::would_write(&agent.config_map, &cm_observed)?
        && !apply::would_write(&agent.daemon_set, &ds_observed)?
        && !apply::would_write(&agent.service_account, &sa_observed)?
    {
        debug!(sources = sources.len(), "pod-log agent up to date");
        return Ok(sources.len());
    }
    // Rendered from checked settings, so a rejection is Mahler's bug: keep
    // the running agent and say so.
    match ctx.telemetry.validator().validate(&yaml).await {
        Ok(took) => ctx.metrics.telemetry_validated("accepted", took),
        Err(e) => {
            let result = match e {
                ValidateError::Rejected(_) => "rejected",
                ValidateError::Unavailable { .. } => "unavailable",
            };
            ctx.metrics.telemetry_validated(result, Default::default());
            return Err(SyncError::Validate(e));
        }
    }
    apply::apply(ctx, agent.service_account, sa_observed).await?;
    apply::apply(ctx, agent.config_map, cm_observed).await?;
    apply::apply(ctx, agent.daemon_set, ds_observed).await?;
    info!(%namespace, sources = sources.len(), config = %telemetry::config_hash(&yaml), "pod-log agent applied");
    Ok(sources.len())
}
