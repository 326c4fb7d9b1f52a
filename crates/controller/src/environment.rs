//! Environment reconciler: its namespace and default-deny policy, once its
//! Project exists; on deletion, deletes its template Services (their
//! infrastructure is destroyed while the namespace is live), then the
//! namespace, and waits for it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::routes::View;
use super::{Context, Error, access, apply, finalizer, status, telemetry, valid_ref};
use mahler_api::{Environment, EnvironmentStatus, Health, Service};
use mahler_core::environment::{
    DEFAULT_DENY_POLICY, desired_default_deny, desired_namespace, owns_namespace,
};

#[tracing::instrument(name = "reconcile", skip_all, fields(environment = %env.name_any()))]
pub(crate) async fn pass(env: &Environment, ctx: &Context) -> Result<Action, Error> {
    // Consul follows the environment's settings (and its deletion).
    if let Some(mesh) = &ctx.mesh {
        mesh.poke();
    }
    // So does the pod-log agent.
    ctx.telemetry.log_agent.poke();
    let ns_name = env.namespace_name();
    let namespace = ctx
        .caches
        .namespaces
        .get(&ObjectRef::new(&ns_name))
        .filter(|ns| owns_namespace(env, ns));

    if env.meta().deletion_timestamp.is_some() {
        let Some(namespace) = namespace else {
            finalizer::remove(ctx, env).await?;
            return Ok(Action::await_change());
        };
        // Template Services go first, while the namespace is live: their
        // `tofu destroy` runs as the environment's own ServiceAccount, which
        // cannot be made (nor its token) in a terminating namespace, and
        // the namespace controller would delete it.
        let mut templates = Vec::new();
        ctx.caches.services_in(Some(&ns_name), &mut |s: &Service| {
            if s.spec.source.template.is_some() {
                templates.push(s.clone());
            }
        });
        let terminating = namespace.meta().deletion_timestamp.is_some();
        if !templates.is_empty() && !terminating {
            templates.sort_by_key(|s| s.name_any());
            for s in &templates {
                apply::delete(ctx, s).await?;
            }
            let names: Vec<String> = templates.iter().map(|s| s.name_any()).collect();
            let health = Health::progressing(
                "Deleting",
                format!(
                    "waiting for template services to destroy their infrastructure: {}",
                    names.join(", ")
                ),
            );
            write_status(ctx, env, &health, Some(ns_name), None).await?;
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        apply::delete(ctx, namespace.as_ref()).await?;
        let health = Health::progressing(
            "Deleting",
            format!("waiting for namespace {ns_name} and everything in it to be deleted"),
        );
        write_status(ctx, env, &health, Some(ns_name), None).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }

    finalizer::ensure(ctx, env).await?;
    let mut telemetry_verdict = None;
    let project = &env.spec.project;
    let health = match ctx.caches.project(project) {
        None => Health::stalled(
            "ProjectNotFound",
            format!("spec.project: Project {project} does not exist"),
        ),
        Some(p) if p.meta().deletion_timestamp.is_some() => Health::progressing(
            "ProjectDeleting",
            format!("Project {project} is being deleted"),
        ),
        Some(p) => match namespace {
            None if foreign_namespace_exists(ctx, env, &ns_name).await? => Health::stalled(
                "NamespaceConflict",
                format!(
                    "namespace {ns_name} already exists and does not belong to this environment; delete it or rename the environment"
                ),
            ),
            observed => {
                let mut wrote = apply::apply(
                    ctx,
                    desired_namespace(env),
                    apply::whole(observed.as_deref()),
                )
                .await?;
                let policy = ctx
                    .caches
                    .network_policies
                    .get(&ns_name, DEFAULT_DENY_POLICY);
                wrote |= apply::apply(ctx, desired_default_deny(env), policy.into()).await?;
                // Members (by their project role) and owners.
                wrote |= access::apply_environment(ctx, env, valid_ref(&p)).await?;
                let active = observed
                    .as_ref()
                    .and_then(|ns| ns.status.as_ref())
                    .and_then(|s| s.phase.as_deref())
                    == Some("Active");
                if active && !wrote {
                    // The collector, once its namespace can hold it.
                    telemetry_verdict = telemetry::apply(ctx, env).await?;
                    Health::ready(format!("namespace {ns_name} is active"))
                } else {
                    Health::progressing(
                        "NamespacePending",
                        format!("waiting for namespace {ns_name} to become active"),
                    )
                }
            }
        },
    };
    let namespace = health.is_ready().then_some(ns_name);
    write_status(ctx, env, &health, namespace, telemetry_verdict.as_ref()).await?;
    Ok(ctx.resync())
}

/// Whether a namespace of that name exists that is not ours. Only asked when
/// the cache (Mahler-labelled namespaces) has none, i.e. before creation.
async fn foreign_namespace_exists(
    ctx: &Context,
    env: &Environment,
    name: &str,
) -> Result<bool, Error> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(name).await.map_err(Error::Kube)? {
        Some(ns) => Ok(!owns_namespace(env, &ns)),
        None => Ok(false),
    }
}

/// The status for `health`; `telemetry_verdict` is the pass's
/// `TelemetryReady` (None: not evaluated this pass, see
/// [`telemetry::condition`]).
async fn write_status(
    ctx: &Context,
    env: &Environment,
    health: &Health,
    namespace: Option<String>,
    telemetry_verdict: Option<&telemetry::Verdict>,
) -> Result<(), Error> {
    let current = ctx.written.current(env, env.status.as_ref());
    let current = current.as_deref();
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut conditions = status::conditions(ctx, env, existing, health).await;
    telemetry::condition(ctx, env, telemetry_verdict, &mut conditions).await;
    let status = EnvironmentStatus {
        observed_generation: env.meta().generation,
        conditions,
        namespace,
    };
    status::patch_status(ctx, env, current, &status).await
}
