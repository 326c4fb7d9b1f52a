//! ResourceTemplate reconciler: checks a template before any Service uses
//! it — its input schema compiles, its module can be read, and `tofu
//! validate` accepts the module — and reports the result as conditions and
//! Events. A module is validated once per content hash (kept in status), so
//! restarts and resyncs start no OpenTofu process.

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::{Context, Error, status};
use mahler_api::{Health, ResourceTemplate, ResourceTemplateStatus};
use mahler_core::terraform::workspace;

#[tracing::instrument(name = "reconcile", skip_all, fields(template = %tpl.name_any()))]
pub(crate) async fn pass(tpl: &ResourceTemplate, ctx: &Context) -> Result<Action, Error> {
    if tpl.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let current = ctx.written.current(tpl, tpl.status.as_ref());
    let current = current.as_deref();
    let names: Vec<&str> = tpl.spec.outputs.iter().map(|o| o.name.as_str()).collect();
    let mut status = ResourceTemplateStatus {
        observed_generation: tpl.meta().generation,
        output_names: (!names.is_empty()).then(|| names.join(",")),
        validated_hash: current.and_then(|s| s.validated_hash.clone()),
        git_commit: current.and_then(|s| s.git_commit.clone()),
        ..Default::default()
    };
    let health = match check(tpl, ctx, current, &mut status).await {
        Ok(()) => Health::ready(format!(
            "module valid; {} input schema; outputs: {}",
            if tpl.spec.inputs.is_some() {
                "with"
            } else {
                "no"
            },
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )),
        Err((reason, message)) => Health::stalled(reason, message),
    };
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions = status::conditions(ctx, tpl, existing, &health).await;
    status::patch_status(ctx, tpl, current, &status).await?;
    Ok(ctx.resync())
}

/// Validates the template; `current` is its status as last known (the
/// verdict for `status.validated_hash` stands until the module changes).
async fn check(
    tpl: &ResourceTemplate,
    ctx: &Context,
    current: Option<&ResourceTemplateStatus>,
    status: &mut ResourceTemplateStatus,
) -> Result<(), (&'static str, String)> {
    // The schema compiles (validated against empty inputs only to compile it).
    if let Err(workspace::RenderError::InvalidSchema(m)) =
        workspace::validate_inputs(&tpl.spec, &Default::default())
    {
        return Err(("InvalidSchema", m));
    }
    // Without OpenTofu the module cannot be validated; say so, but the
    // template itself is not at fault.
    let engine = ctx
        .engine
        .as_ref()
        .map_err(|why| ("EngineUnavailable", why.clone()))?;
    if let Some(git) = &tpl.spec.module.git {
        let commit = engine
            .fetch_git(git)
            .await
            .map_err(|e| ("GitFetchFailed", format!("spec.module.git: {e}")))?;
        status.git_commit = Some(commit);
    }
    let trees = engine.git_trees();
    let module = workspace::module_files(
        &tpl.spec,
        status.git_commit.as_deref().map(|c| (trees.as_path(), c)),
    )
    .map_err(|e| ("InvalidModule", e.to_string()))?;
    for reserved in [workspace::TFVARS, workspace::BACKEND] {
        if module.contains_key(reserved) {
            return Err((
                "InvalidModule",
                format!("spec.module: must not contain {reserved}; Mahler writes it"),
            ));
        }
    }
    let mut h = Sha256::new();
    h.update(engine.fingerprint().as_bytes());
    for (name, content) in &module {
        h.update(name.as_bytes());
        h.update([0]);
        h.update(content.as_bytes());
    }
    let hash = workspace::hex(&h.finalize())[..16].to_string();
    if status.validated_hash.as_deref() == Some(hash.as_str()) {
        // Checked already: the verdict stands until the module changes.
        let previous = current
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .filter(|c| c.status == "False" && c.reason == "InvalidModule");
        return match previous {
            Some(c) => Err(("InvalidModule", c.message.clone())),
            None => Ok(()),
        };
    }
    status.validated_hash = Some(hash);
    engine
        .validate(&tpl.name_any(), &module)
        .await
        .map_err(|diagnostics| ("InvalidModule", format!("tofu validate: {diagnostics}")))
}
