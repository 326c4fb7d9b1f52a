//! Connection reconciler: a NetworkPolicy admitting `from` → `to` on the
//! port, and a status saying whether the variables reached `from`'s pods
//! (the Service reconciler injects them; both resolve edges the same way).

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{Context, Error, apply, consul, status};
use mahler_api::{Connection, ConnectionStatus, Health};
use mahler_core::workload::{self, EdgeOutcome};

#[tracing::instrument(name = "reconcile", skip_all, fields(connection = %conn.name_any(), namespace = conn.namespace().unwrap_or_default()))]
pub(crate) async fn pass(conn: &Connection, ctx: &Context) -> Result<Action, Error> {
    // Deleted, or its namespace is: the garbage collector / namespace
    // controller removes the children; writing now would be refused.
    if conn.meta().deletion_timestamp.is_some()
        || ctx
            .caches
            .namespace_terminating(&conn.namespace().unwrap_or_default())
    {
        return Ok(Action::await_change());
    }
    let ns = conn
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let spec = &conn.spec;
    let from = ctx.caches.service(&ns, &spec.from);
    let to = ctx.caches.service(&ns, &spec.to);
    let policy_name = workload::connection_policy_name(conn);
    let observed_policy = ctx.caches.network_policies.get(&ns, &policy_name);

    // The policy exists exactly while `to` listens on the port.
    let admits = to
        .as_ref()
        .filter(|t| t.spec.ports.iter().any(|p| p.port == spec.port));
    let mut status = ConnectionStatus {
        observed_generation: conn.meta().generation,
        ..Default::default()
    };
    match admits {
        Some(to) => {
            apply::apply(
                ctx,
                workload::desired_connection_policy(conn, to),
                observed_policy.into(),
            )
            .await?;
            status.network_policy = Some(policy_name);
        }
        None => {
            if let Some(stale) = observed_policy {
                apply::delete_child::<NetworkPolicy, _>(ctx, &ns, &policy_name, &stale).await?;
            }
        }
    }

    let health = match &from {
        None => Health::stalled(
            "SourceNotFound",
            format!(
                "spec.from: Service {} does not exist in namespace {ns}",
                spec.from
            ),
        ),
        Some(from) => {
            // `resolve_edges` only looks at the Connections leaving `from`.
            let siblings = ctx.caches.connections_from(&ns, &spec.from);
            let refs: Vec<&Connection> = siblings.iter().collect();
            let targets: Vec<_> = to.iter().cloned().collect();
            let others: Vec<_> = siblings
                .iter()
                .filter(|c| c.spec.from == spec.from && c.spec.to != spec.to)
                .filter_map(|c| ctx.caches.service(&ns, &c.spec.to))
                .collect();
            let mut edges = workload::resolve_edges(
                from,
                &refs,
                |n| {
                    targets
                        .iter()
                        .chain(others.iter())
                        .find(|s| s.name_any() == n)
                },
                &ctx.settings.cluster_domain,
            );
            if let (Some(mesh), Some(env)) = (&ctx.mesh, ctx.caches.environment(&ns)) {
                workload::add_consul_hosts(&mut edges, from, &refs, |to| mesh.dns_host(&env, to));
            }
            let outcome = edges
                .outcomes
                .get(&conn.name_any())
                .cloned()
                .unwrap_or(EdgeOutcome::TargetMissing);
            let (reason, message) = outcome.reason_and_message(conn);
            if let EdgeOutcome::Injected(vars) = outcome {
                status.variables = vars;
                Health::ready(message)
            } else {
                Health::stalled(reason, message)
            }
        }
    };
    let current = ctx.written.current(conn, conn.status.as_ref());
    let current = current.as_deref();
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions = status::conditions(ctx, conn, existing, &health).await;
    consul::connection_conditions(ctx, conn, existing, &mut status.conditions).await;
    status::patch_status(ctx, conn, current, &status).await?;
    Ok(ctx.resync())
}
