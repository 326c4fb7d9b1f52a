//! The one way the operator writes status and Events.
//!
//! Status is written with server-side apply only when it differs from what the
//! object already shows; an Event is published only when the Ready condition
//! changes (status or reason), so a steady state writes nothing.

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Context, Error, ScopedApi, api_for};
use crate::FIELD_MANAGER;
use crate::crd::{ConditionSet, Health};

/// Applies `status` to `obj` if it differs from `current`.
pub async fn patch_status<K, S>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
    S: Serialize + PartialEq,
{
    if current == Some(status) {
        return Ok(());
    }
    let api: Api<K> = api_for(&ctx.client, obj);
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Kube)?;
    ctx.metrics.wrote(&K::kind(&()), "apply_status");
    Ok(())
}

/// New conditions for `health`, and an Event when the Ready condition changed.
pub async fn conditions<K>(
    ctx: &Context,
    obj: &K,
    existing: &[Condition],
    health: &Health,
) -> Vec<Condition>
where
    K: Resource<DynamicType = ()>,
{
    let before = existing
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()));
    let mut set = ConditionSet(existing.to_vec());
    set.apply(health, obj.meta().generation);
    let after = set
        .get("Ready")
        .map(|c| (c.status.clone(), c.reason.clone()));
    if before != after && worth_an_event(before.as_ref(), health) {
        publish(ctx, obj, health).await;
    }
    set.into_vec()
}

/// Whether a change of the Ready condition deserves an Event: becoming Ready,
/// every Stalled reason (a Warning), and work starting on an object that was
/// Ready (a rollout of a new revision, a deletion). Not the progress of a
/// new object towards its first Ready: its conditions say that, and at
/// 1,000 new Services those Events were a third of the operator's writes.
fn worth_an_event(before: Option<&(String, String)>, health: &Health) -> bool {
    match health {
        Health::Progressing { .. } => before.is_some_and(|(status, _)| status == "True"),
        Health::Ready { .. } | Health::Stalled { .. } => true,
    }
}

/// Publishes an Event describing `health` on `obj`. Failures are logged, never
/// fatal: Events are best-effort by design.
pub async fn publish<K>(ctx: &Context, obj: &K, health: &Health)
where
    K: Resource<DynamicType = ()>,
{
    let (type_, action) = match health {
        Health::Ready { .. } => (EventType::Normal, "Reconcile"),
        Health::Progressing { .. } => (EventType::Normal, "Reconcile"),
        Health::Stalled { .. } => (EventType::Warning, "Reconcile"),
    };
    let event = Event {
        type_,
        reason: health.reason().to_string(),
        note: Some(truncate(health.message(), 1000)),
        action: action.to_string(),
        secondary: None,
    };
    let reference = obj.object_ref(&());
    report(ctx, obj, ctx.publish_event(&event, &reference).await);
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Publishes a one-off Event (a Terraform run finished, a lock was
/// recovered, ...). Best-effort like every Event.
pub async fn event<K>(ctx: &Context, obj: &K, warning: bool, reason: &str, note: &str)
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(truncate(note, 1000)),
        action: "Terraform".to_string(),
        secondary: None,
    };
    report(
        ctx,
        obj,
        ctx.publish_event(&event, &obj.object_ref(&())).await,
    );
}

fn report<K: Resource>(ctx: &Context, obj: &K, result: Result<(), kube::Error>) {
    let name = obj.meta().name.as_deref().unwrap_or_default();
    match result {
        Ok(()) => ctx.metrics.wrote("Event", "event"),
        // Expected while an environment's namespace is deleted.
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("being terminated") => {
            tracing::debug!(object = %name, "no event: namespace terminating")
        }
        Err(error) => tracing::warn!(%error, object = %name, "could not publish event"),
    }
}
