//! Adding and removing finalizers, guarded by resourceVersion so a
//! concurrent change makes the write fail (and the pass retry) instead of
//! clobbering another controller's finalizers. The one finalizer path: for
//! Mahler's own objects ([`FINALIZER`]) and for the state Secrets of
//! template Services.
//!
//! kube's `finalizer()` helper removes the finalizer as soon as cleanup returns;
//! Mahler's cleanups take several passes (wait for Environments, then for the
//! namespace), so the reconcilers call these two steps themselves.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{Context, Error, ScopedApi, api_for};
pub use mahler_api::names::FINALIZER;

pub fn has<K: Resource>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

/// Adds Mahler's finalizer if missing.
pub async fn ensure<K>(ctx: &Context, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    add(ctx, obj, FINALIZER).await
}

/// Removes Mahler's finalizer, letting the API server delete the object.
pub async fn remove<K>(ctx: &Context, obj: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    strip(ctx, obj, FINALIZER).await
}

/// Adds the finalizer `name` if missing.
pub async fn add<K>(ctx: &Context, obj: &K, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    if obj.finalizers().iter().any(|f| f == name) {
        return Ok(());
    }
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(name.to_string());
    write(ctx, obj, finalizers).await
}

/// Removes the finalizer `name` if present (a gone object counts as done).
pub async fn strip<K>(ctx: &Context, obj: &K, name: &str) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    if !obj.finalizers().iter().any(|f| f == name) {
        return Ok(());
    }
    let finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != name)
        .cloned()
        .collect();
    match write(ctx, obj, finalizers).await {
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        other => other,
    }
}

async fn write<K>(ctx: &Context, obj: &K, finalizers: Vec<String>) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    let api: Api<K> = api_for(&ctx.client, obj);
    let rv = obj
        .resource_version()
        .ok_or(Error::MissingField("metadata.resourceVersion"))?;
    let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": rv}});
    api.patch(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    ctx.metrics.wrote(&K::kind(&()), "finalizer");
    Ok(())
}
