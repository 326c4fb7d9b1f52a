//! How the caches keep the objects Mahler creates (Deployments, Services,
//! NetworkPolicies): not whole, but as a digest of the fields Mahler's
//! field manager owns, plus the little of their status a reconcile reads.
//!
//! A whole typed Deployment costs about 13 KB of heap; a reconciler needs
//! only to know whose it is (to refuse foreign objects), whether Mahler's
//! fields still hold what Mahler would apply (to skip the apply), and how
//! far the rollout got. The object's `managedFields` entry for Mahler's
//! server-side apply lists exactly Mahler's fields, so the watch prunes the
//! object to that set and keeps a 64-bit digest of it ([`fields_digest`]);
//! `apply` compares the desired object's digest with it. A cached child is
//! about 100 bytes.
//!
//! Pruning gives drift detection the semantics of server-side apply: when
//! someone changes a field Mahler set, the API server moves the field to
//! their manager, it drops out of the pruned view, the digest changes, and
//! the next reconcile re-applies it; a field someone else added (an extra
//! label, a sidecar's env entry) is not Mahler's and is left alone.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use parking_lot::RwLock;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use tokio::sync::watch;

use mahler_api::names::FIELD_MANAGER;
use mahler_core::digest::fields_digest;
use mahler_core::workload::RolloutStatus;

/// A kind Mahler creates, and what of its status the cache keeps.
pub trait ChildKind: Resource<DynamicType = ()> + DeserializeOwned + Send + Sync + 'static {
    type Status: Clone + fmt::Debug + Default + Send + Sync + 'static;
    /// The kept part of the object's `status`.
    fn status(status: Option<Value>) -> Self::Status;
}

impl ChildKind for Deployment {
    type Status = RolloutStatus;
    fn status(status: Option<Value>) -> RolloutStatus {
        // A status the Deployment controller wrote always decodes; if one
        // ever did not, "nothing observed yet" only delays Ready.
        status
            .and_then(|s| serde_json::from_value::<DeploymentStatus>(s).ok())
            .map(|s| RolloutStatus::of(&s))
            .unwrap_or_default()
    }
}

impl ChildKind for KubeService {
    type Status = ();
    fn status(_: Option<Value>) {}
}

impl ChildKind for NetworkPolicy {
    type Status = ();
    fn status(_: Option<Value>) {}
}

impl ChildKind for RoleBinding {
    type Status = ();
    fn status(_: Option<Value>) {}
}

impl ChildKind for ClusterRole {
    type Status = ();
    fn status(_: Option<Value>) {}
}

impl ChildKind for k8s_openapi::api::core::v1::ConfigMap {
    type Status = ();
    fn status(_: Option<Value>) {}
}

impl ChildKind for k8s_openapi::api::core::v1::ServiceAccount {
    type Status = ();
    fn status(_: Option<Value>) {}
}

impl ChildKind for ClusterRoleBinding {
    type Status = ();
    fn status(_: Option<Value>) {}
}

/// A child object as cached.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Child<S> {
    /// [`uid_digest`] of its controller owner's uid; 0 without one.
    pub owner: u64,
    pub generation: i64,
    pub deleting: bool,
    /// [`fields_digest`] of the fields Mahler's apply owns (metadata and spec).
    pub fields: u64,
    pub status: S,
}

impl<S> Child<S> {
    /// Whether `uid` is its controller owner.
    pub fn owned_by(&self, uid: &str) -> bool {
        self.owner != 0 && self.owner == uid_digest(uid)
    }
}

/// A digest of an object's uid (never 0), to match owner references against.
pub fn uid_digest(uid: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    uid.hash(&mut h);
    h.finish().max(1)
}

/// What the watch decodes a child into: its identity and controller owner
/// (to route the event and key the cache), and the [`Child`] it becomes.
pub struct ChildObject<K: ChildKind> {
    metadata: ObjectMeta,
    child: Child<K::Status>,
    kind: PhantomData<fn() -> K>,
}

impl<K: ChildKind> ChildObject<K> {
    fn from_value(mut object: Value) -> Result<Self, serde_json::Error> {
        let Some(fields) = object.as_object_mut() else {
            return Err(serde_json::Error::custom("expected an object"));
        };
        let status = fields.remove("status");
        let owned = match mahler_owned_fields(&object["metadata"]) {
            Some(owned) => prune(&object, owned),
            None => Value::Object(Map::new()),
        };
        let mut meta = match object {
            Value::Object(mut object) => object.remove("metadata").unwrap_or_default(),
            _ => Value::Null,
        };
        if let Some(meta) = meta.as_object_mut() {
            meta.remove("managedFields");
            meta.remove("annotations");
            meta.remove("labels");
        }
        let meta: ObjectMeta = serde_json::from_value(meta)?;
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true))
            .map_or(0, |r| uid_digest(&r.uid));
        Ok(ChildObject {
            child: Child {
                owner,
                generation: meta.generation.unwrap_or(0),
                deleting: meta.deletion_timestamp.is_some(),
                fields: fields_digest(&owned),
                status: K::status(status),
            },
            metadata: identity(meta),
            kind: PhantomData,
        })
    }
}

/// What the metadata keeps: routing and cache keys (name, namespace, the
/// controller owner) and the resourceVersion the watch resumes from.
fn identity(meta: ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        resource_version: meta.resource_version,
        owner_references: meta.owner_references.map(|refs| {
            refs.into_iter()
                .filter(|r| r.controller == Some(true))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

/// The cache of one child kind: namespace → name → [`Child`].
pub struct ChildStore<K: ChildKind> {
    state: Arc<RwLock<State<K::Status>>>,
    ready: watch::Receiver<bool>,
}

/// Namespace → name → child.
type ByNamespace<S> = HashMap<Box<str>, HashMap<Box<str>, Child<S>>>;

struct State<S> {
    objects: ByNamespace<S>,
    /// Objects of a (re)list in progress; they replace `objects` when it ends.
    relist: Option<ByNamespace<S>>,
}

impl<K: ChildKind> Clone for ChildStore<K> {
    fn clone(&self) -> Self {
        ChildStore {
            state: self.state.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// Feeds a [`ChildStore`] from its watch.
pub struct ChildStoreWriter<K: ChildKind> {
    state: Arc<RwLock<State<K::Status>>>,
    ready: watch::Sender<bool>,
}

impl<K: ChildKind> ChildStore<K> {
    pub fn new() -> (Self, ChildStoreWriter<K>) {
        let state = Arc::new(RwLock::new(State {
            objects: HashMap::new(),
            relist: None,
        }));
        let (tx, rx) = watch::channel(false);
        (
            ChildStore {
                state: state.clone(),
                ready: rx,
            },
            ChildStoreWriter { state, ready: tx },
        )
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<Child<K::Status>> {
        self.state.read().objects.get(namespace)?.get(name).cloned()
    }

    /// Resolves once the first list is in.
    pub async fn wait_until_ready(&self) {
        let mut ready = self.ready.clone();
        // An error means the writer is gone: the operator is shutting down.
        let _ = ready.wait_for(|r| *r).await;
    }
}

impl<K: ChildKind> ChildStoreWriter<K> {
    pub fn apply(&self, event: &watcher::Event<ChildObject<K>>) {
        let mut state = self.state.write();
        match event {
            watcher::Event::Init => state.relist = Some(HashMap::new()),
            watcher::Event::InitApply(o) => {
                if let Some(relist) = &mut state.relist {
                    insert(relist, o);
                }
            }
            watcher::Event::InitDone => {
                if let Some(objects) = state.relist.take() {
                    state.objects = objects;
                }
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(o) => insert(&mut state.objects, o),
            watcher::Event::Delete(o) => {
                let (ns, name) = key(o);
                if let Some(names) = state.objects.get_mut(ns) {
                    names.remove(name);
                    if names.is_empty() {
                        state.objects.remove(ns);
                    }
                }
            }
        }
    }
}

fn key<K: ChildKind>(o: &ChildObject<K>) -> (&str, &str) {
    (
        o.metadata.namespace.as_deref().unwrap_or_default(),
        o.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn insert<K: ChildKind>(objects: &mut ByNamespace<K::Status>, o: &ChildObject<K>) {
    let (ns, name) = key(o);
    let names = match objects.get_mut(ns) {
        Some(names) => names,
        None => objects.entry(ns.into()).or_default(),
    };
    match names.get_mut(name) {
        Some(child) => *child = o.child.clone(),
        None => {
            names.insert(name.into(), o.child.clone());
        }
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

impl<K: ChildKind> Clone for ChildObject<K> {
    fn clone(&self) -> Self {
        ChildObject {
            metadata: self.metadata.clone(),
            child: self.child.clone(),
            kind: PhantomData,
        }
    }
}

impl<K: ChildKind> fmt::Debug for ChildObject<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildObject")
            .field("metadata", &self.metadata)
            .field("child", &self.child)
            .finish()
    }
}

impl<'de, K: ChildKind> Deserialize<'de> for ChildObject<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::from_value(Value::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

impl<K: ChildKind> Resource for ChildObject<K> {
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

    fn deployment(image: &str, extra_env: bool) -> Value {
        let mut env = vec![json!({"name": "A", "value": "1"})];
        if extra_env {
            env.push(json!({"name": "THEIRS", "value": "x"}));
        }
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "web", "namespace": "ns", "uid": "u1", "generation": 3,
                "resourceVersion": "7", "labels": {"app": "web", "theirs": "y"},
                "ownerReferences": [{"apiVersion": "mahler.dev/v1alpha1", "kind": "Service",
                                     "name": "web", "uid": "o1", "controller": true}],
                "managedFields": [
                    {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
                     "fieldsV1": {"f:status": {"f:replicas": {}}}},
                    {"manager": FIELD_MANAGER, "operation": "Apply",
                     "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}},
                                  "f:spec": {"f:replicas": {}, "f:selector": {},
                                             "f:template": {"f:spec": {"f:containers": {
                                                 "k:{\"name\":\"web\"}": {".": {}, "f:name": {}, "f:image": {},
                                                     "f:env": {"k:{\"name\":\"A\"}": {".": {}, "f:name": {}, "f:value": {}}}}}}}}}}
                ]
            },
            "spec": {
                "replicas": 2, "progressDeadlineSeconds": 600,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"spec": {"containers": [{"name": "web", "image": image, "env": env,
                                                        "terminationMessagePath": "/dev/termination-log"}]}}
            },
            "status": {"replicas": 2, "updatedReplicas": 2, "availableReplicas": 1, "observedGeneration": 3}
        })
    }

    fn decode(v: Value) -> ChildObject<Deployment> {
        serde_json::from_value(v).expect("decodes as a cache entry")
    }

    #[test]
    fn keeps_identity_owner_a_digest_of_mahlers_fields_and_the_rollout() {
        let object = decode(deployment("x:1", false));
        assert_eq!(object.meta().name.as_deref(), Some("web"));
        assert!(object.meta().labels.is_none() && object.meta().managed_fields.is_none());
        let child = &object.child;
        assert!(child.owned_by("o1") && !child.owned_by("o2"));
        assert_eq!((child.generation, child.deleting), (3, false));
        assert_eq!(
            (
                child.status.reported,
                child.status.available,
                child.status.observed_generation
            ),
            (true, 1, 3)
        );
        // The digest is that of exactly the fields Mahler applied.
        let applied = json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "web", "image": "x:1",
                                                             "env": [{"name": "A", "value": "1"}]}]}}}
        });
        assert_eq!(child.fields, fields_digest(&applied));
    }

    #[test]
    fn others_fields_leave_the_digest_alone_a_changed_field_of_mahlers_does_not() {
        let base = decode(deployment("x:1", false)).child.fields;
        assert_eq!(decode(deployment("x:1", true)).child.fields, base);
        assert_ne!(decode(deployment("x:2", false)).child.fields, base);
    }

    #[test]
    fn an_object_mahler_never_applied_keeps_no_fields() {
        let object: ChildObject<Deployment> = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "theirs", "namespace": "ns"},
            "spec": {"selector": {}, "template": {}}
        }))
        .unwrap();
        assert_eq!(object.child.fields, fields_digest(&json!({})));
        assert_eq!(object.child.owner, 0);
        assert!(!object.child.status.reported);
    }

    #[test]
    fn the_store_follows_applies_deletes_and_relists() {
        let (store, writer) = ChildStore::<Deployment>::new();
        let web = decode(deployment("x:1", false));
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(web.clone()));
        assert!(
            store.get("ns", "web").is_none(),
            "not before the list is complete"
        );
        writer.apply(&watcher::Event::InitDone);
        assert_eq!(store.get("ns", "web"), Some(web.child.clone()));
        writer.apply(&watcher::Event::Delete(web.clone()));
        assert!(store.get("ns", "web").is_none());
        writer.apply(&watcher::Event::Apply(web.clone()));
        assert!(store.get("ns", "web").is_some());
        // A relist without it drops it.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitDone);
        assert!(store.get("ns", "web").is_none());
    }
}
