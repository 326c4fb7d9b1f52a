//! Project reconciler: lists the Project's Environments in status; on
//! deletion deletes them and waits until they are gone.

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::{Context, Error, access, apply, finalizer, status};
use mahler_api::{Health, Project, ProjectStatus};

#[tracing::instrument(name = "reconcile", skip_all, fields(project = %project.name_any()))]
pub(crate) async fn pass(project: &Project, ctx: &Context) -> Result<Action, Error> {
    let mut environments = ctx.caches.environments_of(&project.name_any());
    environments.sort_by_key(|e| e.name_any());
    let names: Vec<String> = environments.iter().map(|e| e.name_any()).collect();

    if project.meta().deletion_timestamp.is_some() {
        if environments.is_empty() {
            finalizer::remove(ctx, project).await?;
            return Ok(Action::await_change());
        }
        for env in environments.iter() {
            apply::delete(ctx, env).await?;
        }
        let health = Health::progressing(
            "Deleting",
            format!(
                "waiting for environments to be deleted: {}",
                names.join(", ")
            ),
        );
        write_status(ctx, project, &health, names).await?;
        // Environment deletions route back here; the requeue is a backstop.
        return Ok(Action::requeue(Duration::from_secs(30)));
    }

    finalizer::ensure(ctx, project).await?;
    // Members' access to the Project and its Environments (the bindings in
    // each environment namespace are the Environments' passes).
    access::apply_project(ctx, project, &names).await?;
    let health = Health::ready(format!("{} environment(s)", names.len()));
    write_status(ctx, project, &health, names).await?;
    Ok(ctx.resync())
}

async fn write_status(
    ctx: &Context,
    project: &Project,
    health: &Health,
    environments: Vec<String>,
) -> Result<(), Error> {
    let current = ctx.written.current(project, project.status.as_ref());
    let current = current.as_deref();
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let status = ProjectStatus {
        observed_generation: project.meta().generation,
        conditions: status::conditions(ctx, project, existing, health).await,
        environments,
    };
    status::patch_status(ctx, project, current, &status).await
}
