//! The one way the operator writes child objects: server-side apply with the
//! `mahler-operator` field manager, skipped entirely when the cached object
//! already matches what we would send.
//!
//! "Matches" means, for a cached [`Child`](super::Child): the fields Mahler's
//! apply owns are exactly the desired object ([`fields_digest`] equal). For
//! the few objects cached whole ([`whole`]): the object carries the hash of
//! the desired object we last applied (catches removed fields), and every
//! field we set has the value we set (catches drift, e.g. someone editing
//! the image). A reconcile with nothing to do therefore sends no write at all.

use std::fmt::Debug;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};

use mahler_api::names::{APPLIED_HASH, FIELD_MANAGER};
use mahler_core::digest::{fields_digest, first_difference};

use super::{Context, Error, ScopedApi, api_for};

/// What `apply` compares the desired object with.
pub enum Observed {
    /// Not there (or not known to be): apply.
    Absent,
    /// A whole object, as JSON.
    Whole(Value),
    /// The [`fields_digest`] of a cached child's Mahler-owned fields.
    Fields(u64),
}

impl<S> From<Option<super::Child<S>>> for Observed {
    fn from(child: Option<super::Child<S>>) -> Self {
        child.map_or(Observed::Absent, |c| Observed::Fields(c.fields))
    }
}

/// Applies `desired` unless `observed` already matches it.
/// Returns whether a write was sent.
pub async fn apply<K>(ctx: &Context, mut desired: K, observed: Observed) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    let hash = hash_of(&desired)?;
    desired
        .annotations_mut()
        .insert(APPLIED_HASH.to_string(), hash);
    if up_to_date(&desired, &observed)? {
        return Ok(false);
    }
    let api: Api<K> = api_for(&ctx.client, &desired);
    let mut body = serde_json::to_value(&desired).map_err(Error::Serialize)?;
    body["apiVersion"] = Value::String(K::api_version(&()).into_owned());
    body["kind"] = Value::String(K::kind(&()).into_owned());
    api.patch(
        &desired.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Kube)?;
    ctx.metrics.wrote(&K::kind(&()), "apply");
    Ok(true)
}

/// Whether [`apply`] of `desired` would send a write (`observed` differs).
pub fn would_write<K>(desired: &K, observed: &Observed) -> Result<bool, Error>
where
    K: Resource<DynamicType = ()> + Serialize + Clone,
{
    let mut desired = desired.clone();
    let hash = hash_of(&desired)?;
    desired
        .annotations_mut()
        .insert(APPLIED_HASH.to_string(), hash);
    Ok(!up_to_date(&desired, observed)?)
}

/// Deletes the child `name` in `namespace` unless it is already going.
/// 404 counts as done.
pub async fn delete_child<K, S>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    observed: &super::Child<S>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    if observed.deleting {
        return Ok(());
    }
    delete_named::<K>(ctx, Some(namespace), name).await
}

/// Deletes an object if it still exists in the cache. 404 counts as done.
pub async fn delete<K>(ctx: &Context, observed: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    if observed.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    delete_named::<K>(
        ctx,
        observed.meta().namespace.as_deref(),
        &observed.name_any(),
    )
    .await
}

pub async fn delete_named<K>(
    ctx: &Context,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone + Debug,
    K::Scope: ScopedApi,
{
    let api: Api<K> = K::Scope::api(ctx.client.clone(), namespace);
    ctx.metrics.wrote(&K::kind(&()), "delete");
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::Kube(e)),
    }
}

fn hash_of<K: Serialize>(desired: &K) -> Result<String, Error> {
    let bytes = serde_json::to_vec(desired).map_err(Error::Serialize)?;
    Ok(format!("{:x}", Sha256::digest(bytes))[..16].to_string())
}

fn up_to_date<K: Resource + Serialize>(desired: &K, observed: &Observed) -> Result<bool, Error> {
    let mut desired_json = serde_json::to_value(desired).map_err(Error::Serialize)?;
    match observed {
        Observed::Absent => Ok(false),
        Observed::Whole(observed) => match first_difference(&desired_json, observed) {
            None => Ok(true),
            Some(path) => {
                tracing::debug!(object = %desired.name_any(), %path, "differs from the desired object; applying");
                Ok(false)
            }
        },
        Observed::Fields(observed) => {
            // Identity is not among the fields an apply owns.
            if let Value::Object(o) = &mut desired_json {
                o.remove("apiVersion");
                o.remove("kind");
                if let Some(Value::Object(meta)) = o.get_mut("metadata") {
                    meta.remove("name");
                    meta.remove("namespace");
                }
            }
            let same = fields_digest(&desired_json) == *observed;
            if !same {
                tracing::debug!(object = %desired.name_any(), "Mahler's fields differ from the desired object; applying");
            }
            Ok(same)
        }
    }
}

/// A whole cached object (or its absence), for `apply`'s `observed`.
pub fn whole<K: Serialize>(observed: Option<&K>) -> Observed {
    // Serialising a decoded Kubernetes object cannot fail; if it ever did,
    // `Absent` only costs one apply.
    observed
        .and_then(|o| serde_json::to_value(o).ok())
        .map_or(Observed::Absent, Observed::Whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_changes_with_content() {
        let a = hash_of(&json!({"a": 1})).unwrap();
        assert_eq!(a, hash_of(&json!({"a": 1})).unwrap());
        assert_ne!(a, hash_of(&json!({"a": 2})).unwrap());
    }
}
