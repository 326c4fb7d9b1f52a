//! Applies the RBAC objects members and owners become
//! (`mahler_core::access`), each skipped when the cache shows it up to date.

use mahler_api::{Environment, Project};
use mahler_core::access;

use super::{Context, Error, apply};

/// The Project's ClusterRoles and bindings. `environments`: its Environments.
/// Returns whether anything was written.
pub(crate) async fn apply_project(
    ctx: &Context,
    project: &Project,
    environments: &[String],
) -> Result<bool, Error> {
    let mut wrote = false;
    for (role, binding) in access::project_roles(project, environments) {
        wrote |= apply_cluster_role(ctx, role, binding).await?;
    }
    Ok(wrote)
}

/// The Environment's owner ClusterRole and binding, and the RoleBindings of
/// members and owners in its namespace (which must exist).
pub(crate) async fn apply_environment(
    ctx: &Context,
    env: &Environment,
    project: Option<&Project>,
) -> Result<bool, Error> {
    let (role, binding) = access::environment_owner(env);
    let mut wrote = apply_cluster_role(ctx, role, binding).await?;
    let namespace = env.namespace_name();
    for binding in access::environment_bindings(env, project) {
        let name = kube::ResourceExt::name_any(&binding);
        let observed = ctx.caches.role_bindings.get(&namespace, &name);
        wrote |= apply::apply(ctx, binding, observed.into()).await?;
    }
    Ok(wrote)
}

async fn apply_cluster_role(
    ctx: &Context,
    role: k8s_openapi::api::rbac::v1::ClusterRole,
    binding: k8s_openapi::api::rbac::v1::ClusterRoleBinding,
) -> Result<bool, Error> {
    let name = kube::ResourceExt::name_any(&role);
    let observed = ctx.caches.cluster_roles.get("", &name);
    let mut wrote = apply::apply(ctx, role, observed.into()).await?;
    let observed = ctx.caches.cluster_role_bindings.get("", &name);
    wrote |= apply::apply(ctx, binding, observed.into()).await?;
    Ok(wrote)
}
