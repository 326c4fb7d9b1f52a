//! Access, proven against the real API server: who may do what, from
//! `Project.spec.members`, `Environment.spec.owners` and `spec.protected`
//! (docs/access.md).
//!
//! The users are the local cluster's token users (hack/cluster.sh, one
//! kubeconfig context each) and the example Project `shop`
//! (manifests/examples/00-shop-project.yaml): `shop-admin` (admin, and owner
//! of shop-staging), `shop-dev` (developer), `shop-viewer` (viewer),
//! `prod-owner` (owner of the protected shop-production, in no role), and
//! `outsider` (in no project). Every write in the matrix is a server-side
//! dry run: authorization and admission policies run, nothing is stored.

use std::time::Duration;

use futures::StreamExt;
use kube::Api;
use mahler_api::{Environment, Project, Service};

use crate::harness::{TestEnv, env, is_ready, kubectl_output, shared, wait_for};
use crate::{env_conditions, project_conditions, svc_conditions};

pub const USERS: [&str; 5] = [
    "shop-admin",
    "shop-dev",
    "shop-viewer",
    "prod-owner",
    "outsider",
];
pub const ENVS: [&str; 2] = ["shop-staging", "shop-production"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Service,
    Connection,
    Environment,
    Project,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Create,
    Update,
    Delete,
}

/// One cell of the matrix: `user` does `verb` on an object of `kind` in
/// environment `env` (for Environments: that Environment; for Projects:
/// the Project `shop`, `env` unused).
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub user: &'static str,
    pub env: &'static str,
    pub kind: Kind,
    pub verb: Verb,
}

/// What docs/access.md promises, written out as a model.
pub fn allowed(c: &Case) -> bool {
    let role = match c.user {
        "shop-admin" => Some("admin"),
        "shop-dev" => Some("developer"),
        "shop-viewer" => Some("viewer"),
        _ => None,
    };
    let owner = matches!(
        (c.user, c.env),
        ("shop-admin", "shop-staging") | ("prod-owner", "shop-production")
    );
    let protected = c.env == "shop-production";
    let writer = matches!(role, Some("admin" | "developer"));
    let unprotected_or_owner = !protected || owner;
    match (c.kind, c.verb) {
        (Kind::Service | Kind::Connection, Verb::Get | Verb::List) => role.is_some() || owner,
        (Kind::Service | Kind::Connection, _) => (writer || owner) && unprotected_or_owner,
        // Cluster-scoped lists cannot be limited by name: nobody here.
        (Kind::Environment | Kind::Project, Verb::List) => false,
        (Kind::Environment, Verb::Get) => role.is_some() || owner,
        // A new Environment of the project: its admins (the
        // environment-create policy).
        (Kind::Environment, Verb::Create) => role == Some("admin"),
        (Kind::Environment, _) => (role == Some("admin") || owner) && unprotected_or_owner,
        (Kind::Project, Verb::Get) => role.is_some() || c.user == "prod-owner",
        (Kind::Project, Verb::Update) => role == Some("admin"),
        // Deleting shop would delete shop-production, which shop-admin does
        // not own (the protected-environment policy); nobody else may.
        (Kind::Project, Verb::Delete | Verb::Create) => false,
    }
}

/// Through the REST API: the same, except that listing Projects and
/// Environments shows a member the ones they may get (mahler_client::visible)
/// instead of a 403.
pub fn allowed_via_rest(c: &Case) -> bool {
    match (c.kind, c.verb) {
        (Kind::Environment | Kind::Project, Verb::List) => c.user != "outsider",
        _ => allowed(c),
    }
}

pub fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let verbs = [
        Verb::Get,
        Verb::List,
        Verb::Create,
        Verb::Update,
        Verb::Delete,
    ];
    for user in USERS {
        for env in ENVS {
            for kind in [Kind::Service, Kind::Connection, Kind::Environment] {
                for verb in verbs {
                    out.push(Case {
                        user,
                        env,
                        kind,
                        verb,
                    });
                }
            }
        }
        for verb in verbs {
            out.push(Case {
                user,
                env: "shop-staging",
                kind: Kind::Project,
                verb,
            });
        }
    }
    out
}

/// The objects the matrix acts on: in each environment a Service
/// `matrix-web` and `matrix-db` and a Connection `matrix-web-db`.
///
/// Several tests share them, and they run at once: the first caller creates
/// them and the others wait for it (two concurrent `kubectl apply` calls of
/// the same new object race to create it, and one gets AlreadyExists).
pub async fn fixtures(env: &TestEnv) {
    static DONE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    DONE.get_or_init(|| create_fixtures(env)).await;
}

async fn create_fixtures(env: &TestEnv) {
    let client = env.client().await;
    let root = env!("CARGO_MANIFEST_DIR");
    env.kubectl(&[
        "apply",
        "-f",
        &format!("{root}/manifests/examples/00-shop-project.yaml"),
    ]);
    for e in ENVS {
        wait_for(
            &Api::<Environment>::all(client.clone()),
            e,
            "Environment Ready",
            is_ready(env_conditions),
        )
        .await;
    }
    wait_for(
        &Api::<Project>::all(client.clone()),
        "shop",
        "Project Ready",
        is_ready(project_conditions),
    )
    .await;
    for e in ENVS {
        // Production is protected: its owner creates them.
        let context = if e == "shop-production" {
            "prod-owner"
        } else {
            "shop-admin"
        };
        let out = kubectl_output(
            &env.kubectl,
            &env.kubeconfig,
            &["--context", context, "apply", "-f", "-"],
            Some(&fixture_yaml(e)),
        );
        assert!(
            out.status.success(),
            "fixtures in {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for(
            &Api::<Service>::namespaced(client.clone(), e),
            "matrix-web",
            "Ready",
            is_ready(svc_conditions),
        )
        .await;
    }
    // The per-project roles name the Environments once the Project pass has
    // seen both: wait for the admin role to list them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let names = env.kubectl(&[
            "get",
            "clusterrole",
            "mahler:project:shop:admin",
            "-o",
            "jsonpath={.rules[*].resourceNames}",
        ]);
        if ENVS.iter().all(|e| names.contains(e)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "roles never named both environments: {names}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn fixture_yaml(ns: &str) -> String {
    format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: matrix-web, namespace: {ns}}}\nspec: {{source: {{image: \"web:1\"}}, ports: [{{name: http, port: 80}}]}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: matrix-db, namespace: {ns}}}\nspec: {{source: {{image: \"db:1\"}}, ports: [{{name: pg, port: 5432}}]}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {{name: matrix-web-db, namespace: {ns}}}\nspec: {{from: matrix-web, to: matrix-db, port: 5432}}\n"
    )
}

/// The case through kubectl as the user's context: (allowed, what it said).
fn by_kubectl(env: &TestEnv, c: &Case) -> (bool, String) {
    let (resource, name) = match c.kind {
        Kind::Service => ("services.mahler.dev", "matrix-web"),
        Kind::Connection => ("connections.mahler.dev", "matrix-web-db"),
        Kind::Environment => ("environments.mahler.dev", c.env),
        Kind::Project => ("projects.mahler.dev", "shop"),
    };
    let namespaced = matches!(c.kind, Kind::Service | Kind::Connection);
    let mut args: Vec<String> = vec!["--context".into(), c.user.into()];
    let mut stdin = None;
    match c.verb {
        Verb::Get => args.extend(["get".into(), resource.into(), name.into()]),
        Verb::List => args.extend(["get".into(), resource.into()]),
        Verb::Create => {
            args.extend(["create", "--dry-run=server", "-f", "-"].map(String::from));
            stdin = Some(match c.kind {
                Kind::Service => format!(
                    "apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {{name: matrix-new, namespace: {}}}\nspec: {{source: {{image: \"new:1\"}}}}\n",
                    c.env
                ),
                Kind::Connection => format!(
                    "apiVersion: mahler.dev/v1alpha1\nkind: Connection\nmetadata: {{name: matrix-new, namespace: {}}}\nspec: {{from: matrix-db, to: matrix-web, port: 80}}\n",
                    c.env
                ),
                Kind::Environment => "apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {name: shop-matrix}\nspec: {project: shop}\n".into(),
                Kind::Project => "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {name: matrix-new}\nspec: {}\n".into(),
            });
        }
        Verb::Update => args.extend(
            [
                "patch",
                resource,
                name,
                "--dry-run=server",
                "--type=merge",
                "-p",
                r#"{"metadata":{"labels":{"e2e.mahler.dev/touched":"true"}}}"#,
            ]
            .map(String::from),
        ),
        Verb::Delete => {
            args.extend(["delete", resource, name, "--dry-run=server"].map(String::from))
        }
    }
    if namespaced {
        args.extend(["-n".into(), c.env.into()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = kubectl_output(&env.kubectl, &env.kubeconfig, &args, stdin.as_deref());
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Runs every case through `run` (16 at a time) and fails with every cell
/// that differs from the model.
pub async fn check_matrix<F>(what: &str, model: fn(&Case) -> bool, run: F)
where
    F: Fn(Case) -> futures::future::BoxFuture<'static, (bool, String)>,
{
    let cases = cases();
    let total = cases.len();
    let results: Vec<(Case, bool, String)> = futures::stream::iter(cases)
        .map(|c| {
            let fut = run(c);
            async move {
                let (ok, said) = fut.await;
                (c, ok, said)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let wrong: Vec<String> = results
        .iter()
        .filter(|(c, ok, _)| *ok != model(c))
        .map(|(c, ok, said)| {
            format!(
                "{} {:?} {:?} in {}: expected {}, got {} ({said})",
                c.user,
                c.verb,
                c.kind,
                c.env,
                if model(c) { "allowed" } else { "denied" },
                if *ok { "allowed" } else { "denied" }
            )
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{what}: {} of {total} cells differ from docs/access.md:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    let allowed_count = results.iter().filter(|(_, ok, _)| *ok).count();
    eprintln!("{what}: {total} cells as documented ({allowed_count} allowed)");
}

#[tokio::test]
async fn the_access_matrix_holds_through_kubectl() {
    let _guard = shared().await;
    let env = env();
    fixtures(env).await;
    check_matrix("kubectl", allowed, |c| {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || by_kubectl(crate::harness::env(), &c))
                .await
                .unwrap()
        })
    })
    .await;
    // A denial by the protected-environment policy names the environment
    // and its owners.
    let (ok, said) = by_kubectl(
        env,
        &Case {
            user: "shop-dev",
            env: "shop-production",
            kind: Kind::Service,
            verb: Verb::Update,
        },
    );
    assert!(!ok);
    assert!(
        said.contains("shop-dev may not update services/matrix-web: Environment shop-production is protected (spec.protected) and only its owners may change it: user:prod-owner"),
        "{said}"
    );
    // Turning protection off is a change only an owner may make.
    let off = r#"{"spec":{"protected":false}}"#;
    let (ok, said) = env.kubectl_as(
        "shop-admin",
        &[
            "patch",
            "environment",
            "shop-production",
            "--type=merge",
            "-p",
            off,
            "--dry-run=server",
        ],
    );
    assert!(
        !ok && said.contains("only its owners may change it: user:prod-owner"),
        "{said}"
    );
    let (ok, said) = env.kubectl_as(
        "prod-owner",
        &[
            "patch",
            "environment",
            "shop-production",
            "--type=merge",
            "-p",
            off,
            "--dry-run=server",
        ],
    );
    assert!(ok, "{said}");
    // The operator's identity may write only the access objects it makes: a
    // binding named like them but to another role, or a role beyond
    // Projects and Environments, is refused (the operator-scope policy).
    let op = crate::harness::OPERATOR_USER;
    for (what, yaml) in [
        (
            "a binding to another role",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: \"mahler:project:evil\"}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: mahler-developer}\nsubjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: outsider}]\n",
        ),
        (
            "a role on Secrets",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"mahler:project:evil\"}\nrules: [{apiGroups: [\"\"], resources: [secrets], verbs: [get]}]\n",
        ),
        (
            "a role on every Environment",
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: \"mahler:project:evil\"}\nrules: [{apiGroups: [mahler.dev], resources: [environments], verbs: [get]}]\n",
        ),
    ] {
        let out = kubectl_output(
            &env.kubectl,
            &env.kubeconfig,
            &["--as", op, "create", "--dry-run=server", "-f", "-"],
            Some(yaml),
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && said.contains("operator-scope"),
            "{what} was not refused: {said}"
        );
    }
    // A protected environment without owners is refused by the schema.
    assert!(
        env.apply_rejected("apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {name: shop-locked}\nspec: {project: shop, protected: true}\n")
            .contains("spec.owners: a protected environment needs at least one owner")
    );
}

/// A member, by ServiceAccount name (the admin impersonates it).
const MEMBER: &str = "system:serviceaccount:default:e2e-member";

fn can(env: &TestEnv, user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let (ok, _) = env.kubectl_as(user, &all);
    ok
}

async fn eventually(env: &TestEnv, user: &str, args: &[&str], want: bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while can(env, user, args) != want {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: still {}",
            !want
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn membership_changes_take_effect_and_are_revoked() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let project = |members: &str| {
        format!(
            "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: members}}\nspec: {{members: {members}}}\n---\n\
             apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: members-dev}}\nspec: {{project: members}}\n"
        )
    };
    let read = ["get", "services.mahler.dev", "-n", "members-dev"];
    let write = ["create", "services.mahler.dev", "-n", "members-dev"];
    let secrets = ["get", "secrets", "-n", "members-dev"];
    let see_env = ["get", "environments.mahler.dev/members-dev"];
    env.apply(&project(&format!("[{{user: \"{MEMBER}\", role: viewer}}]")));
    wait_for(
        &Api::<Environment>::all(client.clone()),
        "members-dev",
        "Ready",
        is_ready(env_conditions),
    )
    .await;
    eventually(env, MEMBER, &read, true, "a new viewer reads services").await;
    eventually(
        env,
        MEMBER,
        &see_env,
        true,
        "a new viewer sees the environment",
    )
    .await;
    assert!(
        !can(env, MEMBER, &write),
        "a viewer may not create services"
    );
    assert!(!can(env, MEMBER, &secrets), "a viewer may not read secrets");

    // Viewer → developer.
    env.apply(&project(&format!(
        "[{{user: \"{MEMBER}\", role: developer}}]"
    )));
    eventually(env, MEMBER, &write, true, "a developer creates services").await;
    assert!(can(env, MEMBER, &secrets));
    assert!(!can(
        env,
        MEMBER,
        &["update", "projects.mahler.dev/members"]
    ));

    // Developer → admin: the project itself.
    env.apply(&project(&format!("[{{user: \"{MEMBER}\", role: admin}}]")));
    eventually(
        env,
        MEMBER,
        &["update", "projects.mahler.dev/members"],
        true,
        "an admin updates the project",
    )
    .await;

    // Removed: nothing left, in the namespace or on the cluster objects.
    env.apply(&project("[]"));
    eventually(env, MEMBER, &read, false, "a removed member reads nothing").await;
    for args in [
        &write[..],
        &secrets,
        &see_env,
        &["get", "projects.mahler.dev/members"],
    ] {
        assert!(
            !can(env, MEMBER, args),
            "still allowed after removal: {args:?}"
        );
    }

    // Deleting the Project removes its roles (garbage collection).
    env.kubectl(&[
        "delete",
        "project",
        "members",
        "--wait=true",
        "--timeout=90s",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = env.kubectl(&[
            "get",
            "clusterroles,clusterrolebindings",
            "-l",
            "mahler.dev/project=members",
            "-o",
            "name",
        ]);
        if left.trim().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "left behind: {left}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn one_projects_secrets_cannot_be_read_from_another() {
    let _guard = shared().await;
    let env = env();
    let client = env.client().await;
    let vault_member = "system:serviceaccount:default:e2e-vault-member";
    env.apply(&format!(
        "apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: vault}}\nspec: {{members: [{{user: \"{vault_member}\", role: developer}}]}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: vault-dev}}\nspec: {{project: vault}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Project\nmetadata: {{name: thief}}\nspec: {{members: [{{user: shop-dev, role: admin}}]}}\n---\n\
         apiVersion: mahler.dev/v1alpha1\nkind: Environment\nmetadata: {{name: thief-dev}}\nspec: {{project: thief}}\n"
    ));
    wait_for(
        &Api::<Environment>::all(client.clone()),
        "vault-dev",
        "Ready",
        is_ready(env_conditions),
    )
    .await;
    // Terraform outputs: a template Service's `<name>-outputs` Secret.
    env.apply("apiVersion: mahler.dev/v1alpha1\nkind: Service\nmetadata: {name: creds, namespace: vault-dev}\nspec:\n  source:\n    template: {name: postgres-credentials, inputs: {database: app}}\n");
    let creds = wait_for(
        &Api::<Service>::namespaced(client.clone(), "vault-dev"),
        "creds",
        "Ready",
        is_ready(svc_conditions),
    )
    .await;
    let secret = creds
        .status
        .and_then(|s| s.outputs_secret)
        .expect("the outputs Secret in status");
    eventually(
        env,
        vault_member,
        &["get", &format!("secrets/{secret}"), "-n", "vault-dev"],
        true,
        "the project's own developer reads its outputs",
    )
    .await;
    let (ok, out) = env.kubectl_as(
        vault_member,
        &["get", "secret", &secret, "-n", "vault-dev", "-o", "name"],
    );
    assert!(ok, "{out}");
    // shop-dev administers another project (thief) and develops in shop:
    // neither reaches vault's Secrets, by name or by list.
    eventually(
        env,
        "shop-dev",
        &["get", "secrets", "-n", "thief-dev"],
        true,
        "shop-dev in thief",
    )
    .await;
    for user in ["shop-dev", "shop-admin", "outsider", "prod-owner"] {
        let (ok, said) = env.kubectl_as(user, &["get", "secret", &secret, "-n", "vault-dev"]);
        assert!(
            !ok && said.contains("forbidden"),
            "{user} read vault's outputs: {said}"
        );
        let (ok, _) = env.kubectl_as(user, &["get", "secrets", "-n", "vault-dev"]);
        assert!(!ok, "{user} listed vault's secrets");
    }
    // And the other way round.
    let (ok, _) = env.kubectl_as(vault_member, &["get", "secrets", "-n", "shop-staging"]);
    assert!(!ok, "vault's member listed shop's secrets");
    // Waited for: the template's `tofu destroy` must not run into another
    // test's window (the no-op test counts every operator write).
    env.kubectl(&[
        "delete",
        "project",
        "vault",
        "thief",
        "--wait=true",
        "--timeout=180s",
    ]);
}

#[tokio::test]
async fn cli_commands_work_as_each_local_user() {
    let _guard = shared().await;
    let env = env();
    fixtures(env).await;
    let cli = crate::cli::Cli::new("access-users");
    let status = cli
        .run(&["--kube-context", "shop-viewer", "status", "shop-staging"])
        .ok();
    assert!(status.stdout.contains("matrix-web"), "{}", status.stdout);
    // Members may not list Environments; the CLI shows the ones they may get.
    let envs = cli
        .run(&["--kube-context", "shop-viewer", "env", "list", "-o", "name"])
        .ok();
    let mut listed: Vec<&str> = envs.stdout.lines().collect();
    listed.sort();
    assert!(
        listed.iter().any(|l| l.ends_with("shop-production"))
            && listed.iter().any(|l| l.ends_with("shop-staging")),
        "{}",
        envs.stdout
    );
    assert!(
        listed.iter().all(|l| l.contains("shop-")),
        "another project's environment: {}",
        envs.stdout
    );
    let projects = cli
        .run(&[
            "--kube-context",
            "prod-owner",
            "project",
            "list",
            "-o",
            "name",
        ])
        .ok();
    assert_eq!(
        projects.stdout.trim().rsplit('/').next(),
        Some("shop"),
        "{}",
        projects.stdout
    );
    cli.run(&["--kube-context", "outsider", "env", "list"])
        .fails(5);
    cli.run(&[
        "--kube-context",
        "shop-dev",
        "deploy",
        "matrix-db",
        "--image",
        "db:2",
        "--env",
        "shop-staging",
    ])
    .ok();
    let refused = cli
        .run(&[
            "--kube-context",
            "shop-dev",
            "deploy",
            "matrix-db",
            "--image",
            "db:2",
            "--env",
            "shop-production",
        ])
        .fails(5);
    assert!(
        refused
            .stderr
            .contains("Environment shop-production is protected (spec.protected) and only its owners may change it: user:prod-owner"),
        "{}",
        refused.stderr
    );
    cli.run(&[
        "--kube-context",
        "prod-owner",
        "deploy",
        "matrix-db",
        "--image",
        "db:2",
        "--env",
        "shop-production",
    ])
    .ok();
    cli.run(&["--kube-context", "outsider", "status", "shop-staging"])
        .fails(5);
    let viewer = cli
        .run(&[
            "--kube-context",
            "shop-viewer",
            "deploy",
            "matrix-db",
            "--image",
            "db:3",
            "--env",
            "shop-staging",
        ])
        .fails(5);
    assert!(viewer.stderr.contains("shop-viewer"), "{}", viewer.stderr);
}
