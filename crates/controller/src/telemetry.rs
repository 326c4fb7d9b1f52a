//! An Environment's OpenTelemetry collector, applied from its pass
//! (docs/telemetry.md): checked settings, Secrets that exist, a config the
//! collector's own `otelcol validate` accepts. Only then is anything
//! written, so an invalid change never replaces the running collector; the
//! `TelemetryReady` condition says why, naming the field.
//!
//! A pass whose rendered config equals the ConfigMap's (it was validated
//! when it was written) neither validates nor reads Secrets: a resync with
//! nothing to do runs no process and sends no request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service as KubeService, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;

use mahler_api::Environment;
use mahler_api::names::COLLECTOR_NAME;
use mahler_core::telemetry::{self, Problem};
use mahler_core::workload::{self, Rollout};
use mahler_engine::otelcol::{ValidateError, Validator};

use super::{ChildKind, ChildStore, Context, Error, ScopedApi, apply};

/// The operator's collector settings.
#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    /// The image of environments' collectors.
    pub collector_image: String,
    /// The ClusterRole bound to each collector's ServiceAccount in its
    /// namespace (reading pods and ReplicaSets, for k8s_attributes).
    pub collector_cluster_role: String,
    /// The collector binary that validates configs.
    pub otelcol: PathBuf,
    /// Where configs are written for validation.
    pub workdir: PathBuf,
    /// The namespace of the pod-log node agent (None: pod logs are not
    /// collected; docs/telemetry.md, "Logs").
    pub log_agent_namespace: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            collector_image: "otel/opentelemetry-collector-contrib:0.165.0".into(),
            collector_cluster_role: "mahler-collector".into(),
            otelcol: "otelcol".into(),
            workdir: std::env::temp_dir().join("mahler-otelcol"),
            log_agent_namespace: None,
        }
    }
}

/// Validation, and what it last refused per environment (so the same
/// invalid config is not validated again on every pass).
pub struct Telemetry {
    pub settings: TelemetrySettings,
    validator: Validator,
    /// Environment uid → (config hash, why it was rejected).
    rejected: Mutex<HashMap<String, (String, String)>>,
    /// The pod-log agent's sync, poked by environment passes.
    pub log_agent: super::log_agent::LogAgent,
}

impl Telemetry {
    pub fn new(settings: TelemetrySettings) -> Arc<Self> {
        Arc::new(Telemetry {
            validator: Validator::new(settings.otelcol.clone(), settings.workdir.clone()),
            settings,
            rejected: Mutex::default(),
            log_agent: Default::default(),
        })
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }
}

/// The `TelemetryReady` condition an Environment's pass sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Verdict {
    fn failed(reason: &'static str, message: impl Into<String>) -> Self {
        Verdict {
            ready: false,
            reason,
            message: message.into(),
        }
    }
}

impl From<Problem> for Verdict {
    fn from(p: Problem) -> Self {
        Verdict::failed(p.reason(), p.to_string())
    }
}

/// Applies `env`'s collector (or removes it without `spec.telemetry`);
/// `None` when the environment has no telemetry.
pub(crate) async fn apply(ctx: &Context, env: &Environment) -> Result<Option<Verdict>, Error> {
    let ns = env.namespace_name();
    let uid = env.uid().unwrap_or_default();
    let Some(t) = &env.spec.telemetry else {
        remove(ctx, &ns, &uid).await?;
        return Ok(None);
    };
    let this = &ctx.telemetry;
    if let Err(problem) = telemetry::check(t) {
        return Ok(Some(problem.into()));
    }
    // A Deployment or Service of that name that is not ours (a Mahler
    // Service named mahler-collector): stop rather than take it over.
    let foreign = |owner: Option<u64>| owner.is_some_and(|o| o != super::child::uid_digest(&uid));
    let deployment = ctx.caches.deployments.get(&ns, COLLECTOR_NAME);
    if foreign(deployment.as_ref().map(|d| d.owner))
        || foreign(
            ctx.caches
                .kube_services
                .get(&ns, COLLECTOR_NAME)
                .map(|s| s.owner),
        )
    {
        return Ok(Some(Verdict::failed(
            "NameConflict",
            format!(
                "a Deployment or Service named {COLLECTOR_NAME} in {ns} belongs to something else (a Service of that name?); the collector needs the name"
            ),
        )));
    }
    let yaml = telemetry::config_yaml(&telemetry::render_config(env, t));
    let hash = telemetry::config_hash(&yaml);
    let c = telemetry::desired_collector(env, t, &this.settings.collector_image, &yaml);

    let observed_config: apply::Observed = owned(&ctx.caches.config_maps, &ns, &uid).into();
    let observed_deploy = deployment.filter(|d| d.owned_by(&uid));
    let live = !apply::would_write(&c.config_map, &observed_config)?
        && !apply::would_write(&c.deployment, &observed_deploy.clone().into())?;
    if !live {
        // A change: its Secrets must exist and the collector must accept it.
        if let Err(problem) = check_secrets(ctx, &ns, t).await? {
            return Ok(Some(problem.into()));
        }
        let rejected = this.rejected.lock().get(&uid).cloned();
        match rejected {
            Some((h, why)) if h == hash => {
                return Ok(Some(Problem::ConfigRejected(why).into()));
            }
            _ => {}
        }
        match this.validator.validate(&yaml).await {
            Ok(took) => {
                ctx.metrics.telemetry_validated("accepted", took);
                this.rejected.lock().remove(&uid);
            }
            Err(ValidateError::Rejected(why)) => {
                ctx.metrics
                    .telemetry_validated("rejected", Default::default());
                this.rejected
                    .lock()
                    .insert(uid.clone(), (hash.clone(), why.clone()));
                return Ok(Some(Problem::ConfigRejected(why).into()));
            }
            Err(e @ ValidateError::Unavailable { .. }) => {
                ctx.metrics
                    .telemetry_validated("unavailable", Default::default());
                return Ok(Some(Verdict::failed(
                    "ValidatorUnavailable",
                    format!(
                        "the config cannot be validated, so the running collector is kept: {e} (operator flag --otelcol, chart telemetry.otelcol)"
                    ),
                )));
            }
        }
    }
    // Identity and access first, the config before the pods that read it.
    apply::apply(
        ctx,
        c.service_account,
        owned(&ctx.caches.service_accounts, &ns, &uid).into(),
    )
    .await?;
    let mut binding = c.role_binding;
    binding.role_ref.kind = "ClusterRole".into();
    binding
        .role_ref
        .name
        .clone_from(&this.settings.collector_cluster_role);
    apply::apply(
        ctx,
        binding,
        owned(&ctx.caches.role_bindings, &ns, &uid).into(),
    )
    .await?;
    apply::apply(ctx, c.config_map, observed_config).await?;
    apply::apply(
        ctx,
        c.service,
        owned(&ctx.caches.kube_services, &ns, &uid).into(),
    )
    .await?;
    // Its hole in the environment's default-deny policy.
    apply::apply(
        ctx,
        telemetry::collector_policy(env, t, this.settings.log_agent_namespace.as_deref()),
        owned(&ctx.caches.network_policies, &ns, &uid).into(),
    )
    .await?;
    let replicas = t.collector.as_ref().and_then(|c| c.replicas).unwrap_or(1);
    let wrote = apply::apply(ctx, c.deployment, observed_deploy.clone().into()).await?;
    let rollout = match (&observed_deploy, wrote) {
        (Some(d), false) => workload::rollout(replicas, d.generation, &d.status),
        _ => Rollout::InProgress {
            message: "applied".into(),
            available: 0,
        },
    };
    Ok(Some(match rollout {
        Rollout::Complete { available } => Verdict {
            ready: true,
            reason: "CollectorReady",
            message: format!(
                "collector {COLLECTOR_NAME} runs config {hash} ({available}/{replicas} ready); {}",
                logs_note(&this.settings, t)
            ),
        },
        Rollout::InProgress { available, .. } => Verdict::failed(
            "RollingOut",
            format!(
                "collector {COLLECTOR_NAME} is rolling out config {hash} ({available}/{replicas} ready)"
            ),
        ),
        Rollout::Failed { message } => Verdict::failed(
            "CollectorFailed",
            format!("collector {COLLECTOR_NAME}: {message}"),
        ),
    }))
}

/// What happens to the environment's pod logs.
fn logs_note(settings: &TelemetrySettings, t: &mahler_api::TelemetrySpec) -> String {
    use mahler_core::log_agent::{AGENT_NAME, exports_logs};
    match (&settings.log_agent_namespace, exports_logs(t)) {
        (_, false) => "pod logs are not collected: no exporter takes logs (otlp or debug)".into(),
        (Some(ns), true) => format!("pod logs are read by the node agent {ns}/{AGENT_NAME}"),
        (None, true) => "pod logs are not collected: the operator runs no log agent (--log-agent-namespace, chart telemetry.logs.enabled)".into(),
    }
}

/// The cached child named after the collector in `ns`, if `uid` owns it.
fn owned<K: ChildKind>(
    store: &ChildStore<K>,
    ns: &str,
    uid: &str,
) -> Option<super::Child<K::Status>> {
    store.get(ns, COLLECTOR_NAME).filter(|c| c.owned_by(uid))
}

/// Each Secret key the settings read exists (asked only for a change).
async fn check_secrets(
    ctx: &Context,
    ns: &str,
    t: &mahler_api::TelemetrySpec,
) -> Result<Result<(), Problem>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for (field, r) in telemetry::secret_refs(t) {
        let Some(secret) = secrets.get_opt(&r.name).await.map_err(Error::Kube)? else {
            return Ok(Err(Problem::SecretNotFound {
                field,
                secret: r.name.clone(),
                namespace: ns.to_string(),
            }));
        };
        // `stringData` is write-only: the API server folds it into `data`.
        if !secret.data.as_ref().is_some_and(|m| m.contains_key(&r.key)) {
            return Ok(Err(Problem::SecretKeyNotFound {
                field,
                secret: r.name.clone(),
                key: r.key.clone(),
            }));
        }
    }
    Ok(Ok(()))
}

/// Removes a collector the environment no longer asks for.
async fn remove(ctx: &Context, ns: &str, uid: &str) -> Result<(), Error> {
    async fn gone<K>(ctx: &Context, store: &ChildStore<K>, ns: &str, uid: &str) -> Result<(), Error>
    where
        K: ChildKind + Clone + std::fmt::Debug,
        K::Scope: ScopedApi,
    {
        if let Some(child) = owned(store, ns, uid) {
            apply::delete_child::<K, _>(ctx, ns, COLLECTOR_NAME, &child).await?;
        }
        Ok(())
    }
    gone::<Deployment>(ctx, &ctx.caches.deployments, ns, uid).await?;
    gone::<KubeService>(ctx, &ctx.caches.kube_services, ns, uid).await?;
    gone::<NetworkPolicy>(ctx, &ctx.caches.network_policies, ns, uid).await?;
    gone::<ConfigMap>(ctx, &ctx.caches.config_maps, ns, uid).await?;
    gone::<RoleBinding>(ctx, &ctx.caches.role_bindings, ns, uid).await?;
    gone::<ServiceAccount>(ctx, &ctx.caches.service_accounts, ns, uid).await?;
    ctx.telemetry.rejected.lock().remove(uid);
    Ok(())
}

/// The `TelemetryReady` condition for `verdict`, and an Event when its
/// status or reason changes: a Warning for a failure, Normal for ready.
/// Progress (`RollingOut`) has no Event of its own. Without a verdict the
/// condition goes if the environment has no telemetry, and otherwise stays
/// as it was (the pass did not get to the collector: its namespace is not
/// active yet, or the pass wrote something first).
pub(crate) async fn condition(
    ctx: &Context,
    env: &Environment,
    verdict: Option<&Verdict>,
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) {
    use mahler_api::names::TELEMETRY_READY;
    let before = conditions
        .iter()
        .find(|c| c.type_ == TELEMETRY_READY)
        .map(|c| (c.status.clone(), c.reason.clone()));
    let Some(v) = verdict else {
        if env.spec.telemetry.is_none() {
            conditions.retain(|c| c.type_ != TELEMETRY_READY);
        }
        return;
    };
    let mut set = mahler_api::ConditionSet(std::mem::take(conditions));
    set.set(
        TELEMETRY_READY,
        v.ready,
        v.reason,
        &v.message,
        env.meta().generation,
    );
    *conditions = set.into_vec();
    let after = (
        if v.ready { "True" } else { "False" }.to_string(),
        v.reason.to_string(),
    );
    if before.as_ref() != Some(&after) && v.reason != "RollingOut" {
        super::status::event(ctx, env, !v.ready, "Telemetry", v.reason, &v.message).await;
    }
}
