//! What an Environment should produce, as pure functions: its namespace and
//! the default-deny ingress NetworkPolicy inside it.
//!
//! No client calls here; `controller::environment` applies what this builds.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};

use mahler_api::Environment;
use mahler_api::names::MANAGED_BY;

pub use mahler_api::names::DEFAULT_DENY_POLICY;
use mahler_api::names::{ENVIRONMENT_LABEL, PROJECT_LABEL};

pub fn labels(env: &Environment) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (PROJECT_LABEL.to_string(), env.spec.project.clone()),
        (ENVIRONMENT_LABEL.to_string(), env.name_any()),
    ])
}

/// The namespace an Environment owns, labelled with its project and name.
pub fn desired_namespace(env: &Environment) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(env.namespace_name()),
            labels: Some(labels(env)),
            owner_references: env.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Denies all ingress to pods in the namespace; Connections open holes in it.
pub fn desired_default_deny(env: &Environment) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(DEFAULT_DENY_POLICY.to_string()),
            namespace: Some(env.namespace_name()),
            labels: Some(labels(env)),
            owner_references: env.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: None,
            egress: None,
        }),
    }
}

/// Whether `ns` is the namespace Mahler made for `env` (and not a namespace
/// someone else created with the same name).
pub fn owns_namespace(env: &Environment, ns: &Namespace) -> bool {
    let labels = ns.labels();
    labels.get(MANAGED_BY.0).map(String::as_str) == Some(MANAGED_BY.1)
        && labels.get(ENVIRONMENT_LABEL) == Some(&env.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::EnvironmentSpec;

    fn env() -> Environment {
        let mut e = Environment::new(
            "shop-staging",
            EnvironmentSpec {
                project: "shop".into(),
                ..Default::default()
            },
        );
        e.metadata.uid = Some("uid-1".into());
        e
    }

    #[test]
    fn namespace_is_named_and_labelled_after_the_environment() {
        let ns = desired_namespace(&env());
        assert_eq!(ns.name_any(), "shop-staging");
        assert_eq!(ns.labels()[PROJECT_LABEL], "shop");
        assert_eq!(ns.labels()[ENVIRONMENT_LABEL], "shop-staging");
        let owner = &ns.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Environment", "uid-1")
        );
    }

    #[test]
    fn default_deny_selects_every_pod_and_allows_no_ingress() {
        let np = desired_default_deny(&env());
        let spec = np.spec.unwrap();
        assert_eq!(spec.pod_selector, Some(LabelSelector::default()));
        assert_eq!(spec.policy_types, Some(vec!["Ingress".into()]));
        assert!(spec.ingress.is_none());
    }

    #[test]
    fn a_foreign_namespace_is_not_ours() {
        let mut ns = desired_namespace(&env());
        assert!(owns_namespace(&env(), &ns));
        ns.metadata.labels = None;
        assert!(!owns_namespace(&env(), &ns));
    }
}
