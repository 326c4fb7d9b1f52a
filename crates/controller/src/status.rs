//! The one way the operator writes status and Events.
//!
//! Status is written with server-side apply only when it differs from what the
//! object already shows; an Event is published only when the Ready condition
//! changes (status or reason), so a steady state writes nothing.
//!
//! "What the object already shows" is the cached object, or the status this
//! process wrote last while the cache does not show that write yet (see
//! [`Written`]).

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use mahler_api::names::{FIELD_MANAGER, NOT_IMPLEMENTED};
use mahler_core::unsupported::{self, NotImplemented};

use super::{Context, Error, ScopedApi};
use mahler_api::{ConditionSet, Health};

/// Statuses this process wrote that its cache does not show yet, by uid.
///
/// A reconcile triggered right after a status write (a child's watch event,
/// a Connection's) often reads its object from the cache before the watch
/// has delivered that write. Compared with the stale status, the same status
/// looked new: it was written again and its Ready transition announced with
/// a second Event. At 1,000 new Services with Connections that was about a
/// third of all status writes and Events. So a write is remembered until the
/// cache shows it, and [`Written::current`] answers with it meanwhile. The
/// watch normally delivers a write within milliseconds; an entry older than
/// [`Written::TTL`] is dropped (the watch may have relisted past the write,
/// or someone else wrote the status since): a status someone else wrote
/// right after ours counts again from the object's first reconcile after
/// that.
#[derive(Default)]
pub struct Written(Mutex<HashMap<String, (Instant, AnyStatus)>>);

type AnyStatus = Box<dyn Any + Send + Sync>;

impl Written {
    const TTL: Duration = Duration::from_secs(10);

    /// The status to compare a new one with: `cached`, unless this process
    /// wrote a different one since that the cache does not show yet.
    pub fn current<'a, K, S>(&self, obj: &K, cached: Option<&'a S>) -> Option<Cow<'a, S>>
    where
        K: Resource,
        S: Clone + PartialEq + Send + Sync + 'static,
    {
        let Some(uid) = obj.meta().uid.as_deref() else {
            return cached.map(Cow::Borrowed);
        };
        let mut written = self.0.lock();
        if let Some((at, status)) = written.get(uid) {
            match status.downcast_ref::<S>() {
                Some(status) if cached != Some(status) && at.elapsed() < Self::TTL => {
                    return Some(Cow::Owned(status.clone()));
                }
                // The cache caught up (or the entry is too old to trust).
                _ => {
                    written.remove(uid);
                }
            }
        }
        cached.map(Cow::Borrowed)
    }

    fn record<K: Resource, S: Send + Sync + 'static>(&self, obj: &K, status: S) {
        let Some(uid) = obj.meta().uid.clone() else {
            return;
        };
        let mut written = self.0.lock();
        // Entries normally go at the object's next reconcile; this clears
        // the expired ones of objects that had none (deleted meanwhile).
        if written.len() >= 256 {
            written.retain(|_, (at, _)| at.elapsed() < Self::TTL);
        }
        written.insert(uid, (Instant::now(), Box::new(status)));
    }

    /// Forgets what was written to an object whose status is being written
    /// by other means.
    pub fn forget(&self, uid: &str) {
        self.0.lock().remove(uid);
    }
}

/// Applies `status` to `obj` if it differs from `current` (from
/// [`Written::current`]).
pub async fn patch_status<K, S>(
    ctx: &Context,
    obj: &K,
    current: Option<&S>,
    status: &S,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
    S: Serialize + PartialEq + Clone + Send + Sync + 'static,
{
    if current == Some(status) {
        return Ok(());
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        tracing::debug!(object = %obj.name_any(), kind = %K::kind(&()), changed = ?changed_fields(current, status), "writing status");
    }
    apply_status(
        ctx,
        &ApiResource::erase::<K>(&()),
        obj.meta().namespace.as_deref(),
        &obj.name_any(),
        status,
    )
    .await?;
    ctx.written.record(obj, status.clone());
    Ok(())
}

/// Server-side applies `status` to the object `name` of `resource`: the
/// one status write, also for objects that cannot be decoded (so the
/// response is read as a [`DynamicObject`]).
pub async fn apply_status<S: Serialize>(
    ctx: &Context,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    status: &S,
) -> Result<(), Error> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, resource),
        None => Api::all_with(ctx.client.clone(), resource),
    };
    let body = json!({
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Kube)?;
    ctx.metrics.wrote(&resource.kind, "apply_status");
    Ok(())
}

/// The top-level status fields (conditions by type) that differ, for the
/// debug log of every status write.
fn changed_fields<S: Serialize>(current: Option<&S>, new: &S) -> Vec<String> {
    let to_map = |s: Option<&S>| match s.map(serde_json::to_value) {
        Some(Ok(serde_json::Value::Object(m))) => m,
        _ => serde_json::Map::new(),
    };
    let (old, new) = (to_map(current), to_map(Some(new)));
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut changed = Vec::new();
    for key in keys {
        let (a, b) = (old.get(key), new.get(key));
        if a == b {
            continue;
        }
        if key == "conditions" {
            let by_type = |v: Option<&serde_json::Value>| -> Vec<(String, String)> {
                v.and_then(|v| v.as_array())
                    .map(|cs| {
                        cs.iter()
                            .map(|c| {
                                (
                                    c["type"].as_str().unwrap_or("?").to_string(),
                                    format!("{}/{}", c["status"], c["reason"]),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            changed.push(format!("conditions {:?} -> {:?}", by_type(a), by_type(b)));
        } else {
            changed.push(format!(
                "{key} {} -> {}",
                a.map(ToString::to_string).unwrap_or_default(),
                b.map(ToString::to_string).unwrap_or_default()
            ));
        }
    }
    changed
}

/// New conditions for `health`, and an Event when the Ready condition changed.
///
/// Also the `NotImplemented` condition: True, naming the fields the object
/// uses that this version accepts but does not act on yet (with a Warning
/// Event when that list changes), and gone when it uses none.
pub async fn conditions<K>(
    ctx: &Context,
    obj: &K,
    existing: &[Condition],
    health: &Health,
) -> Vec<Condition>
where
    K: Resource<DynamicType = ()> + NotImplemented,
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
    let fields = obj.not_implemented();
    if fields.is_empty() {
        set.0.retain(|c| c.type_ != NOT_IMPLEMENTED);
    } else {
        let message = unsupported::message(&fields);
        let news = set
            .get(NOT_IMPLEMENTED)
            .is_none_or(|c| c.message != message);
        set.set(
            NOT_IMPLEMENTED,
            true,
            "FieldsNotImplemented",
            &message,
            obj.meta().generation,
        );
        if news {
            event(
                ctx,
                obj,
                true,
                "Reconcile",
                "FieldsNotImplemented",
                &message,
            )
            .await;
        }
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

/// Publishes an Event describing `health` on `obj`.
pub async fn publish<K>(ctx: &Context, obj: &K, health: &Health)
where
    K: Resource<DynamicType = ()>,
{
    let warning = matches!(health, Health::Stalled { .. });
    event(
        ctx,
        obj,
        warning,
        "Reconcile",
        health.reason(),
        health.message(),
    )
    .await;
}

/// Publishes an Event on `obj`: the one Event helper. `action` is what the
/// operator was doing (`Reconcile`, `Terraform`, `Delete`, `Decode`),
/// `reason` the CamelCase outcome. Best-effort: a failure is logged, never
/// fatal.
pub async fn event<K>(ctx: &Context, obj: &K, warning: bool, action: &str, reason: &str, note: &str)
where
    K: Resource<DynamicType = ()>,
{
    event_on(ctx, &obj.object_ref(&()), warning, action, reason, note).await
}

/// [`event`], for an object known only by reference (one that cannot be decoded).
pub async fn event_on(
    ctx: &Context,
    reference: &ObjectReference,
    warning: bool,
    action: &str,
    reason: &str,
    note: &str,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_string(),
        note: Some(mahler_core::truncate(note, 1000)),
        action: action.to_string(),
        secondary: None,
    };
    let name = reference.name.as_deref().unwrap_or_default();
    tracing::debug!(object = %name, kind = ?reference.kind, %reason, "publishing event");
    // A fresh `Recorder` per Event, as kube documents it: a long-lived one
    // keeps every Event it published for 6 minutes (to turn repeats into
    // series), which during a 1,000-Service rollout cost more memory than
    // the object caches. Mahler publishes on condition changes, so repeats
    // are rare and a new Event is right.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    match recorder.publish(&event, reference).await {
        Ok(()) => ctx.metrics.wrote("Event", "event"),
        // Expected while an environment's namespace is deleted.
        Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("being terminated") => {
            tracing::debug!(object = %name, "no event: namespace terminating")
        }
        Err(error) => {
            tracing::warn!(error = %super::kube_message(&error), object = %name, "could not publish event")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{Service, ServiceSpec};

    fn object(uid: &str) -> Service {
        let mut s = Service::new("api", ServiceSpec::default());
        s.metadata.uid = Some(uid.into());
        s
    }

    #[test]
    fn a_write_the_cache_does_not_show_yet_is_the_current_status() {
        let written = Written::default();
        let obj = object("u1");
        let (old, new) = ("rolling out".to_string(), "ready".to_string());
        written.record(&obj, new.clone());
        // The cache still shows the status before the write.
        assert_eq!(written.current(&obj, Some(&old)).as_deref(), Some(&new));
        assert_eq!(written.current(&obj, None).as_deref(), Some(&new));
        // Another object is not affected.
        assert_eq!(
            written.current(&object("u2"), Some(&old)).as_deref(),
            Some(&old)
        );
    }

    #[test]
    fn once_the_cache_shows_the_write_the_cache_is_current_again() {
        let written = Written::default();
        let obj = object("u1");
        written.record(&obj, "ready".to_string());
        let cached = "ready".to_string();
        assert_eq!(
            written.current(&obj, Some(&cached)).as_deref(),
            Some(&cached)
        );
        // The entry is gone: a later status from elsewhere is taken as is.
        let later = "edited".to_string();
        assert_eq!(written.current(&obj, Some(&later)).as_deref(), Some(&later));
    }

    #[test]
    fn a_write_of_another_status_type_is_ignored() {
        let written = Written::default();
        let obj = object("u1");
        written.record(&obj, 7_u32);
        let cached = "ready".to_string();
        assert_eq!(
            written.current(&obj, Some(&cached)).as_deref(),
            Some(&cached)
        );
    }
}
