//! Who may do what, as RBAC objects built from `Project.spec.members` and
//! `Environment.spec.owners` (pure functions; `controller::project` and
//! `controller::environment` apply them).
//!
//! - In each environment namespace, a RoleBinding per role to the chart's
//!   ClusterRoles `mahler-admin`, `mahler-developer`, `mahler-viewer`
//!   (members, by role) and `mahler-owner` (the Environment's owners). The
//!   bindings always exist, possibly without subjects, so a membership
//!   change is one apply and never a delete.
//! - For the cluster-scoped objects a member may see, per Project: a
//!   ClusterRole `mahler:project:<p>` (get/watch of the Project and of its
//!   Environments, by `resourceNames`) bound to every member, and
//!   `mahler:project:<p>:admin` (update/patch/delete of them, and creating
//!   Environments, which the `<release>-environment-create` policy limits to
//!   projects the user may update) bound to the admins. Per Environment,
//!   `mahler:environment:<e>:owner` (get/watch/update/patch/delete of it, get
//!   of its Project) bound to its owners.
//!
//! No wildcard anywhere, and a rule whose `resourceNames` would be empty is
//! left out (an empty list would mean every name).

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use mahler_api::names::{ENVIRONMENT_LABEL, MANAGED_BY, PROJECT_LABEL};
use mahler_api::{Environment, Member, Owner, Project, Role};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The chart's ClusterRole for a project role.
pub fn cluster_role(role: Role) -> &'static str {
    match role {
        Role::Admin => "mahler-admin",
        Role::Developer => "mahler-developer",
        Role::Viewer => "mahler-viewer",
    }
}

/// The chart's ClusterRole bound to an Environment's owners in its namespace.
pub const OWNER_ROLE: &str = "mahler-owner";

/// Every ClusterRole the environment RoleBindings point at (the operator
/// holds `bind` on exactly these).
pub const BOUND_ROLES: [&str; 4] = [
    "mahler-admin",
    "mahler-developer",
    "mahler-viewer",
    OWNER_ROLE,
];

/// Name of the per-project ClusterRole (and binding) every member gets.
pub fn project_member_role(project: &str) -> String {
    format!("mahler:project:{project}")
}

/// Name of the per-project ClusterRole (and binding) of its admins.
pub fn project_admin_role(project: &str) -> String {
    format!("mahler:project:{project}:admin")
}

/// Name of the per-environment ClusterRole (and binding) of its owners.
pub fn environment_owner_role(environment: &str) -> String {
    format!("mahler:environment:{environment}:owner")
}

fn subject(user: &Option<String>, group: &Option<String>) -> Option<Subject> {
    let (kind, name) = match (user, group) {
        (Some(u), _) => ("User", u),
        (None, Some(g)) => ("Group", g),
        (None, None) => return None,
    };
    Some(Subject {
        api_group: Some(RBAC_GROUP.into()),
        kind: kind.into(),
        name: name.clone(),
        namespace: None,
    })
}

/// The subjects of `members` (all of them, or those with `role`), in order,
/// without duplicates.
pub fn member_subjects(members: &[Member], role: Option<Role>) -> Vec<Subject> {
    let mut out: Vec<Subject> = Vec::new();
    for m in members.iter().filter(|m| role.is_none_or(|r| m.role == r)) {
        if let Some(s) = subject(&m.user, &m.group)
            && !out.contains(&s)
        {
            out.push(s);
        }
    }
    out
}

pub fn owner_subjects(owners: &[Owner]) -> Vec<Subject> {
    let mut out: Vec<Subject> = Vec::new();
    for o in owners {
        if let Some(s) = subject(&o.user, &o.group)
            && !out.contains(&s)
        {
            out.push(s);
        }
    }
    out
}

fn labels(project: &str, environment: Option<&str>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (PROJECT_LABEL.to_string(), project.to_string()),
    ]);
    if let Some(e) = environment {
        labels.insert(ENVIRONMENT_LABEL.to_string(), e.to_string());
    }
    labels
}

fn meta(
    name: String,
    namespace: Option<String>,
    labels: BTreeMap<String, String>,
    owner: Option<OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        labels: Some(labels),
        owner_references: owner.map(|r| vec![r]),
        ..Default::default()
    }
}

fn rule(resource: &str, names: &[String], verbs: &[&str]) -> Option<PolicyRule> {
    // An empty resourceNames list would grant every name: leave the rule out.
    (!names.is_empty()).then(|| PolicyRule {
        api_groups: Some(vec![mahler_api::GROUP.into()]),
        resources: Some(vec![resource.into()]),
        resource_names: Some(names.to_vec()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        non_resource_urls: None,
    })
}

fn cluster_role_binding(role: ClusterRole, subjects: Vec<Subject>) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: role.metadata.clone(),
        role_ref: RoleRef {
            api_group: Some(RBAC_GROUP.into()),
            kind: "ClusterRole".into(),
            name: role.name_any(),
        },
        subjects: Some(subjects),
    }
}

/// The per-project ClusterRoles and bindings: (member role, its binding,
/// admin role, its binding). `environments` are the Project's Environments.
pub fn project_roles(
    project: &Project,
    environments: &[String],
) -> [(ClusterRole, ClusterRoleBinding); 2] {
    let p = project.name_any();
    let owner = project.controller_owner_ref(&());
    let read = ["get", "watch"];
    let write = ["update", "patch", "delete"];
    let member = ClusterRole {
        metadata: meta(
            project_member_role(&p),
            None,
            labels(&p, None),
            owner.clone(),
        ),
        rules: Some(
            [
                rule("projects", std::slice::from_ref(&p), &read),
                rule("environments", environments, &read),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        aggregation_rule: None,
    };
    let mut admin_rules: Vec<PolicyRule> = [
        rule("projects", std::slice::from_ref(&p), &write),
        rule("environments", environments, &write),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Creation has no name to match; the environment-create admission
    // policy limits it to Projects the user may update.
    admin_rules.push(PolicyRule {
        api_groups: Some(vec![mahler_api::GROUP.into()]),
        resources: Some(vec!["environments".into()]),
        verbs: vec!["create".into()],
        ..Default::default()
    });
    let admin = ClusterRole {
        metadata: meta(project_admin_role(&p), None, labels(&p, None), owner),
        rules: Some(admin_rules),
        aggregation_rule: None,
    };
    let members = member_subjects(&project.spec.members, None);
    let admins = member_subjects(&project.spec.members, Some(Role::Admin));
    [
        (member.clone(), cluster_role_binding(member, members)),
        (admin.clone(), cluster_role_binding(admin, admins)),
    ]
}

/// The ClusterRole and binding giving an Environment's owners rights on the
/// Environment object itself.
pub fn environment_owner(env: &Environment) -> (ClusterRole, ClusterRoleBinding) {
    let e = env.name_any();
    let p = env.spec.project.clone();
    let role = ClusterRole {
        metadata: meta(
            environment_owner_role(&e),
            None,
            labels(&p, Some(&e)),
            env.controller_owner_ref(&()),
        ),
        rules: Some(
            [
                rule(
                    "environments",
                    std::slice::from_ref(&e),
                    &["get", "watch", "update", "patch", "delete"],
                ),
                rule("projects", std::slice::from_ref(&p), &["get", "watch"]),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        aggregation_rule: None,
    };
    let subjects = owner_subjects(&env.spec.owners);
    (role.clone(), cluster_role_binding(role, subjects))
}

/// The RoleBindings in an Environment's namespace: one per project role
/// (its members) and one for the owners, named after the ClusterRole.
/// `project` is `None` while the Project is not known: members are then
/// unbound (and owners still bound).
pub fn environment_bindings(env: &Environment, project: Option<&Project>) -> Vec<RoleBinding> {
    let e = env.name_any();
    let members = project
        .map(|p| p.spec.members.as_slice())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut bind = |role: &str, subjects: Vec<Subject>| {
        out.push(RoleBinding {
            metadata: meta(
                role.to_string(),
                Some(env.namespace_name()),
                labels(&env.spec.project, Some(&e)),
                env.controller_owner_ref(&()),
            ),
            role_ref: RoleRef {
                api_group: Some(RBAC_GROUP.into()),
                kind: "ClusterRole".into(),
                name: role.to_string(),
            },
            subjects: Some(subjects),
        });
    };
    for role in [Role::Admin, Role::Developer, Role::Viewer] {
        bind(cluster_role(role), member_subjects(members, Some(role)));
    }
    bind(OWNER_ROLE, owner_subjects(&env.spec.owners));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{EnvironmentSpec, ProjectSpec};

    fn member(user: Option<&str>, group: Option<&str>, role: Role) -> Member {
        Member {
            user: user.map(Into::into),
            group: group.map(Into::into),
            role,
        }
    }

    fn shop() -> Project {
        let mut p = Project::new(
            "shop",
            ProjectSpec {
                display_name: None,
                members: vec![
                    member(Some("shop-admin"), None, Role::Admin),
                    member(Some("shop-dev"), None, Role::Developer),
                    member(None, Some("shop-devs"), Role::Developer),
                    member(Some("shop-viewer"), None, Role::Viewer),
                    member(Some("shop-dev"), None, Role::Developer),
                ],
            },
        );
        p.metadata.uid = Some("p-uid".into());
        p
    }

    fn names(subjects: &[Subject]) -> Vec<String> {
        subjects
            .iter()
            .map(|s| format!("{}:{}", s.kind, s.name))
            .collect()
    }

    #[test]
    fn members_are_bound_by_role_in_each_environment_and_owners_apart() {
        let mut env = Environment::new(
            "shop-production",
            EnvironmentSpec {
                project: "shop".into(),
                owners: vec![Owner {
                    user: Some("prod-owner".into()),
                    group: None,
                }],
                ..Default::default()
            },
        );
        env.metadata.uid = Some("e-uid".into());
        let bindings = environment_bindings(&env, Some(&shop()));
        let by_name: BTreeMap<_, _> = bindings
            .iter()
            .map(|b| (b.name_any(), names(b.subjects.as_deref().unwrap())))
            .collect();
        assert_eq!(
            by_name,
            BTreeMap::from([
                ("mahler-admin".into(), vec!["User:shop-admin".to_string()]),
                (
                    "mahler-developer".into(),
                    vec!["User:shop-dev".into(), "Group:shop-devs".into()]
                ),
                ("mahler-viewer".into(), vec!["User:shop-viewer".into()]),
                ("mahler-owner".into(), vec!["User:prod-owner".into()]),
            ])
        );
        for b in &bindings {
            assert_eq!(b.namespace().as_deref(), Some("shop-production"));
            assert_eq!(b.role_ref.name, b.name_any());
            assert_eq!(b.owner_references()[0].uid, "e-uid");
        }
        // Without the Project, members lose their bindings; owners keep theirs.
        let orphan = environment_bindings(&env, None);
        assert!(
            orphan[..3]
                .iter()
                .all(|b| b.subjects.as_ref().unwrap().is_empty())
        );
        assert_eq!(orphan[3].subjects.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn project_roles_name_only_the_projects_own_objects() {
        let envs = vec!["shop-staging".to_string(), "shop-production".to_string()];
        let [(member, member_binding), (admin, admin_binding)] = project_roles(&shop(), &envs);
        assert_eq!(member.name_any(), "mahler:project:shop");
        assert_eq!(admin.name_any(), "mahler:project:shop:admin");
        assert_eq!(
            names(member_binding.subjects.as_deref().unwrap()),
            vec![
                "User:shop-admin",
                "User:shop-dev",
                "Group:shop-devs",
                "User:shop-viewer"
            ]
        );
        assert_eq!(
            names(admin_binding.subjects.as_deref().unwrap()),
            vec!["User:shop-admin"]
        );
        let rules = member.rules.unwrap();
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(&["shop".to_string()][..])
        );
        assert_eq!(rules[1].resource_names.as_deref(), Some(&envs[..]));
        for role in [&rules, admin.rules.as_ref().unwrap()] {
            for r in role {
                assert!(!r.verbs.iter().any(|v| v == "*" || v == "list"), "{r:?}");
                assert!(r.resources.iter().flatten().all(|x| x != "*"));
            }
        }
    }

    #[test]
    fn a_project_without_environments_grants_no_environment_names() {
        let [(member, _), (admin, _)] = project_roles(&shop(), &[]);
        let rules = member.rules.unwrap();
        assert_eq!(
            rules.len(),
            1,
            "no rule with an empty resourceNames: {rules:?}"
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["projects".to_string()][..])
        );
        // The admin role: its project, and creating environments (no names).
        let admin = admin.rules.unwrap();
        assert_eq!(admin.len(), 2);
        assert_eq!(admin[1].verbs, vec!["create"]);
        assert!(admin[1].resource_names.is_none());
    }
}
