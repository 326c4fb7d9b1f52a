//! Listing the cluster-scoped kinds (Projects, Environments) as a project
//! member. RBAC cannot limit a LIST by name, so members may not list them
//! (docs/access.md), but they may GET their own: when the LIST is
//! forbidden, the names come from the caller's own rules
//! (SelfSubjectRulesReview) and each is read with a GET.

use k8s_openapi::ClusterResourceScope;
use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;

/// Every object of a cluster-scoped Mahler kind the caller may see. The
/// LIST's 403 is returned when the caller's rules name none.
pub async fn list_visible<K>(client: &Client) -> Result<Vec<K>, kube::Error>
where
    K: Resource<DynamicType = (), Scope = ClusterResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::all(client.clone());
    let forbidden = match api.list(&ListParams::default()).await {
        Ok(list) => return Ok(list.items),
        Err(kube::Error::Api(s)) if s.code == 403 => kube::Error::Api(s),
        Err(e) => return Err(e),
    };
    let review = Api::<SelfSubjectRulesReview>::all(client.clone())
        .create(
            &PostParams::default(),
            &SelfSubjectRulesReview {
                spec: SelfSubjectRulesReviewSpec {
                    namespace: Some("default".into()),
                },
                ..Default::default()
            },
        )
        .await?;
    let rules = review.status.map(|s| s.resource_rules).unwrap_or_default();
    let names = gettable_names(&rules, &K::plural(&()));
    if names.is_empty() {
        return Err(forbidden);
    }
    let mut out = Vec::new();
    for read in futures::future::join_all(names.iter().map(|n| api.get_opt(n))).await {
        match read {
            Ok(Some(o)) => out.push(o),
            // Gone since, or not readable after all: not visible.
            Ok(None) | Err(kube::Error::Api(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The names `rules` let the caller GET for Mahler's `plural`, sorted.
pub fn gettable_names(
    rules: &[k8s_openapi::api::authorization::v1::ResourceRule],
    plural: &str,
) -> Vec<String> {
    let mut names: Vec<String> = rules
        .iter()
        .filter(|r| {
            r.api_groups
                .iter()
                .flatten()
                .any(|g| g == mahler_api::GROUP)
        })
        .filter(|r| r.resources.iter().flatten().any(|x| x == plural))
        .filter(|r| r.verbs.iter().any(|v| v == "get"))
        .flat_map(|r| r.resource_names.clone().unwrap_or_default())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authorization::v1::ResourceRule;

    fn rule(group: &str, resource: &str, verbs: &[&str], names: Option<&[&str]>) -> ResourceRule {
        ResourceRule {
            api_groups: Some(vec![group.into()]),
            resources: Some(vec![resource.into()]),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            resource_names: names.map(|n| n.iter().map(|x| x.to_string()).collect()),
        }
    }

    #[test]
    fn only_names_granted_get_on_the_kind_count() {
        let rules = vec![
            rule(
                "mahler.dev",
                "environments",
                &["get", "watch"],
                Some(&["shop-staging", "shop-prod"]),
            ),
            rule(
                "mahler.dev",
                "environments",
                &["update"],
                Some(&["other-x"]),
            ),
            rule("mahler.dev", "projects", &["get"], Some(&["shop"])),
            rule("", "environments", &["get"], Some(&["core-x"])),
            rule(
                "mahler.dev",
                "environments",
                &["get"],
                Some(&["shop-staging"]),
            ),
            rule("mahler.dev", "environments", &["create"], None),
        ];
        assert_eq!(
            gettable_names(&rules, "environments"),
            vec!["shop-prod", "shop-staging"]
        );
        assert_eq!(gettable_names(&rules, "projects"), vec!["shop"]);
        assert!(gettable_names(&rules, "services").is_empty());
    }
}
