//! How the caches keep the objects Mahler creates (Deployments, Services,
//! NetworkPolicies): not whole, but as the fields Mahler's field manager
//! owns plus status.
//!
//! A whole typed Deployment costs about 13 KB of heap; a reconciler needs
//! only its identity and ownership (to route events and refuse foreign
//! objects), the fields Mahler set (to tell whether an apply is due) and the
//! status (to follow a rollout). The object's `managedFields` entry for
//! Mahler's server-side apply lists exactly those fields, so the cache keeps
//! the object pruned to that set, as compact JSON, and decodes it on demand.
//!
//! Pruning also gives drift detection the semantics of server-side apply:
//! when someone changes a field Mahler set, the API server moves the field
//! to their manager, it drops out of the pruned view, and the next reconcile
//! re-applies it; a field someone else added (an extra label, a sidecar's
//! env entry) is not Mahler's and is left alone.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::FIELD_MANAGER;

/// A child object as cached: identity and ownership in `metadata`, the rest
/// (Mahler's fields and status) as compact JSON.
pub struct Child<K> {
    metadata: ObjectMeta,
    json: Box<str>,
    kind: PhantomData<fn() -> K>,
}

impl<K> Child<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    fn from_value(mut object: Value) -> Result<Self, serde_json::Error> {
        let Some(fields) = object.as_object_mut() else {
            return Err(serde_json::Error::custom("expected an object"));
        };
        let status = fields.remove("status");
        let full = object;
        let mut view = match mahler_owned_fields(&full["metadata"]) {
            Some(owned) => prune(&full, owned),
            None => Value::Object(Map::new()),
        };
        if let (Value::Object(view), Some(status)) = (&mut view, status) {
            view.insert("status".into(), status);
        }
        let meta = match full {
            Value::Object(mut full) => {
                let mut meta = full.remove("metadata").unwrap_or_default();
                if let Some(meta) = meta.as_object_mut() {
                    meta.remove("managedFields");
                }
                meta
            }
            _ => Value::Null,
        };
        let meta: ObjectMeta = serde_json::from_value(meta)?;
        Ok(Child {
            metadata: identity(meta),
            json: serde_json::to_string(&view)?.into_boxed_str(),
            kind: PhantomData,
        })
    }

    /// Mahler's fields, name, namespace and status as JSON (what `apply`
    /// compares against).
    pub fn value(&self) -> Value {
        // The cache wrote this string itself, from a `Value`.
        let mut value: Value = serde_json::from_str(&self.json).unwrap_or_default();
        if let Value::Object(object) = &mut value {
            // List items carry no apiVersion and kind; the type knows them.
            object.insert("apiVersion".into(), K::api_version(&()).into());
            object.insert("kind".into(), K::kind(&()).into());
            let meta = object
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            for (key, v) in [
                ("name", &self.metadata.name),
                ("namespace", &self.metadata.namespace),
            ] {
                if let (Some(meta), Some(v)) = (meta.as_object_mut(), v) {
                    meta.insert(key.into(), Value::String(v.clone()));
                }
            }
        }
        value
    }

    /// The view as a typed object: identity, Mahler's fields and status set;
    /// everything else absent. Fails only if Mahler owns too little of the
    /// object for `K`'s required fields (someone else took them over).
    pub fn decode(&self) -> Result<K, serde_json::Error> {
        let mut object: K = serde_json::from_str(&self.json)?;
        let (meta, view) = (object.meta_mut(), &self.metadata);
        meta.name.clone_from(&view.name);
        meta.namespace.clone_from(&view.namespace);
        meta.generation = view.generation;
        meta.resource_version.clone_from(&view.resource_version);
        meta.deletion_timestamp.clone_from(&view.deletion_timestamp);
        Ok(object)
    }
}

/// What the typed metadata keeps: what routing, ownership checks, deletes
/// and rollout judgement read, and the resourceVersion the watch resumes
/// from. (Not the uid: nothing reads a child's own uid, and the cache key
/// would carry a second copy.)
fn identity(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        generation: meta.generation,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        owner_references: meta.owner_references.map(|refs| {
            refs.into_iter()
                .filter(|r| r.controller == Some(true))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

/// The `fieldsV1` set of Mahler's server-side apply, if it has one.
fn mahler_owned_fields(metadata: &Value) -> Option<&Map<String, Value>> {
    metadata
        .get("managedFields")?
        .as_array()?
        .iter()
        .find(|entry| {
            entry["manager"] == FIELD_MANAGER
                && entry["operation"] == "Apply"
                && entry.get("subresource").is_none_or(Value::is_null)
        })?
        .get("fieldsV1")?
        .as_object()
}

/// The part of `value` a `fieldsV1` set covers.
///
/// The set's keys are `f:<field>` for object fields, and for list items
/// `k:<merge key as JSON>`, `v:<value as JSON>` or `i:<index>`; `.` marks
/// the node itself. An empty set owns the whole value (a leaf, or an atomic
/// list or map). List items keep their order in `value`.
pub fn prune(value: &Value, set: &Map<String, Value>) -> Value {
    let children = || set.iter().filter(|(k, _)| k.as_str() != ".");
    if children().next().is_none() {
        return value.clone();
    }
    // A malformed (non-object) set entry owns its whole value, like a leaf.
    let sub = |v: &Value, s: &Value| match s.as_object() {
        Some(s) => prune(v, s),
        None => v.clone(),
    };
    match value {
        Value::Object(object) => Value::Object(
            children()
                .filter_map(|(key, s)| {
                    let name = key.strip_prefix("f:")?;
                    Some((name.to_string(), sub(object.get(name)?, s)))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .filter_map(|(index, item)| {
                    children()
                        .find(|(key, _)| list_key_matches(key, index, item))
                        .map(|(_, s)| sub(item, s))
                })
                .collect(),
        ),
        leaf => leaf.clone(),
    }
}

fn list_key_matches(key: &str, index: usize, item: &Value) -> bool {
    if let Some(merge_key) = key.strip_prefix("k:") {
        let Ok(Value::Object(wanted)) = serde_json::from_str::<Value>(merge_key) else {
            return false;
        };
        return wanted.iter().all(|(k, v)| item.get(k) == Some(v));
    }
    if let Some(v) = key.strip_prefix("v:") {
        return serde_json::from_str::<Value>(v).is_ok_and(|v| &v == item);
    }
    key.strip_prefix("i:")
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i == index)
}

impl<K> Clone for Child<K> {
    fn clone(&self) -> Self {
        Child {
            metadata: self.metadata.clone(),
            json: self.json.clone(),
            kind: PhantomData,
        }
    }
}

impl<K> fmt::Debug for Child<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("metadata", &self.metadata)
            .field("json", &self.json)
            .finish()
    }
}

impl<'de, K> Deserialize<'de> for Child<K>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_value(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Child<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prunes_to_the_owned_fields_keeping_list_order() {
        let object = json!({
            "metadata": {"labels": {"a": "1", "theirs": "x"}, "uid": "u"},
            "spec": {
                "replicas": 2,
                "revisionHistoryLimit": 10,
                "containers": [
                    {"name": "sidecar", "image": "s"},
                    {"name": "app", "image": "i", "imagePullPolicy": "Always",
                     "ports": [{"containerPort": 80, "protocol": "TCP"}],
                     "args": ["a", "b"]}
                ],
                "finalizers": ["x", "y"]
            }
        });
        let set = fields(json!({
            "f:metadata": {"f:labels": {".": {}, "f:a": {}}},
            "f:spec": {
                "f:replicas": {},
                "f:containers": {
                    "k:{\"name\":\"app\"}": {
                        ".": {}, "f:name": {}, "f:image": {}, "f:args": {},
                        "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                    }
                },
                "f:finalizers": {"v:\"y\"": {}}
            }
        }));
        assert_eq!(
            prune(&object, &set),
            json!({
                "metadata": {"labels": {"a": "1"}},
                "spec": {
                    "replicas": 2,
                    "containers": [{"name": "app", "image": "i", "args": ["a", "b"],
                                    "ports": [{"containerPort": 80}]}],
                    "finalizers": ["y"]
                }
            })
        );
    }

    #[test]
    fn keeps_identity_owned_fields_and_status_and_decodes() {
        let deployment = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "ns", "uid": "u1", "generation": 3,
                "resourceVersion": "7", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "mahler.dev/v1alpha1", "kind": "Service",
                                     "name": "web", "uid": "o1", "controller": true}],
                "managedFields": [
                    {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:replicas": {}}}},
                    {"manager": FIELD_MANAGER, "operation": "Apply",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}},
                                  "f:spec": {"f:replicas": {}, "f:selector": {},
                                             "f:template": {"f:spec": {"f:containers": {
                                                 "k:{\"name\":\"web\"}": {"f:name": {}, "f:image": {}}}}}}}}
                ]
            },
            "spec": {
                "replicas": 2, "progressDeadlineSeconds": 600,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": "x:1",
                                                        "terminationMessagePath": "/dev/termination-log"}]}}
            },
            "status": {"replicas": 2, "observedGeneration": 3}
        });
        let child: Child<Deployment> =
            serde_json::from_value(deployment).expect("decodes as a cache entry");
        assert_eq!(child.meta().name.as_deref(), Some("web"));
        assert_eq!(child.meta().owner_references.as_ref().unwrap().len(), 1);
        assert!(child.meta().managed_fields.is_none() && child.meta().labels.is_none());
        assert_eq!(
            child.value(),
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "ns", "labels": {"app": "web"}},
                "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"spec": {"containers": [{"name": "web", "image": "x:1"}]}}},
                "status": {"replicas": 2, "observedGeneration": 3}
            })
        );
        let decoded = child.decode().expect("a typed Deployment again");
        assert_eq!(decoded.metadata.generation, Some(3));
        assert_eq!(decoded.status.unwrap().observed_generation, Some(3));
        assert_eq!(decoded.spec.unwrap().progress_deadline_seconds, None);
    }

    #[test]
    fn an_object_mahler_never_applied_keeps_no_fields() {
        let child: Child<Deployment> = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "theirs", "namespace": "ns"},
            "spec": {"selector": {}, "template": {}}
        }))
        .unwrap();
        assert_eq!(
            child.value(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "theirs", "namespace": "ns"}})
        );
    }
}
