//! project / env / service create|list|get|delete, connect, disconnect and
//! deploy: the commands that write one object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use mahler_api::{
    Approval, Connection, ConnectionSpec, EnvVar, Environment, EnvironmentSpec, Member, Owner,
    Project, ProjectSpec, Role, Service, ServicePort, ServiceSpec, Source, TemplateSource,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Ctx, FIELD_MANAGER};
use crate::args::{
    ConnectArgs, DeployArgs, DisconnectArgs, EnvCommand, Output, ProjectCommand, ServiceCommand,
    ServiceCreate, WaitArgs,
};
use crate::error::{CliError, Exit, Result};
use crate::output::{list, structured};
use crate::progress::{Children, wait_ready};
use crate::render;
use crate::settings::full_environment_name;

pub fn project_conditions(o: &Project) -> &[Condition] {
    o.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}
pub fn env_conditions(o: &Environment) -> &[Condition] {
    o.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}
pub fn template_conditions(o: &mahler_api::ResourceTemplate) -> &[Condition] {
    o.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}
pub fn service_conditions(o: &Service) -> &[Condition] {
    o.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}
pub fn connection_conditions(o: &Connection) -> &[Condition] {
    o.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default()
}

/// `kind.mahler.dev/name`, as kubectl prints names.
pub fn qualified<K: Resource<DynamicType = ()>>(o: &K) -> String {
    format!(
        "{}.{}/{}",
        K::kind(&()).to_lowercase(),
        K::group(&()),
        o.name_any()
    )
}

/// Prints objects in the chosen format; `table` draws table and wide.
fn show<K>(
    ctx: &Ctx,
    items: &[K],
    one: bool,
    table: fn(&crate::output::Printer, &[K], bool) -> String,
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Serialize,
{
    let p = &ctx.printer;
    let text = match p.format {
        Output::Table | Output::Wide => {
            if items.is_empty() {
                format!("No {} found.\n", K::plural(&()))
            } else {
                table(p, items, p.format == Output::Wide)
            }
        }
        Output::Name => items.iter().map(|o| qualified(o) + "\n").collect(),
        f if one => structured(f, &items[0])?,
        f => structured(f, &list(items))?,
    };
    ctx.print(&text);
    Ok(())
}

fn post() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    }
}

/// Creates `obj`, turning "already exists" into a one-line error.
async fn create<K>(ctx: &Ctx, api: &Api<K>, obj: &K, what: &str, instead: &str) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match api.create(&post(), obj).await {
        Ok(o) => {
            println!("{} created", qualified(&o));
            Ok(o)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            Err(CliError::failure(format!("{what} already exists")).hint(instead.to_string()))
        }
        // The namespace of an Environment the operator has not made yet.
        Err(kube::Error::Api(s))
            if s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
        {
            Err(CliError::new(Exit::NotReady, format!("{what}: {}", crate::error::api_message(&s)))
                .hint("the operator makes the namespace from the Environment: `mahler env create ... --wait` waits for it"))
        }
        Err(e) => Err(ctx.cluster.err(what)(e)),
    }
}

/// Deletes `name` and, with --wait, waits until it is gone (finalizers run).
async fn delete<K>(ctx: &Ctx, api: Api<K>, name: &str, what: &str, wait: &WaitArgs) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s))
            if s.code == 404 && s.details.as_ref().is_some_and(|d| !d.name.is_empty()) =>
        {
            return Err(CliError::not_found(format!("{what} not found")));
        }
        Err(e) => return Err(ctx.cluster.err(what)(e)),
    }
    let qualified_name = format!("{}.{}/{name}", K::kind(&()).to_lowercase(), K::group(&()));
    if !wait.wait {
        println!("{qualified_name} deleted");
        return Ok(());
    }
    let gone = kube::runtime::wait::await_condition(api, name, |o: Option<&K>| o.is_none());
    match tokio::time::timeout(wait.timeout, gone).await {
        Ok(Ok(_)) => {
            println!("{qualified_name} deleted");
            Ok(())
        }
        Ok(Err(e)) => Err(crate::error::from_wait(
            e,
            &format!("watching the deletion of {what}"),
        )),
        Err(_) => Err(CliError::new(
            Exit::NotReady,
            format!(
                "{what} is still being deleted after {}s",
                wait.timeout.as_secs()
            ),
        )
        .hint(format!(
            "`kubectl get {} {name} -o yaml` shows its finalizers and status",
            K::plural(&())
        ))),
    }
}

fn parse_member(spec: &str) -> Result<Member> {
    let bad = || {
        CliError::usage(format!(
            "--member {spec}: expected user:NAME=ROLE or group:NAME=ROLE with ROLE admin, developer or viewer"
        ))
    };
    let (who, role) = spec.rsplit_once('=').ok_or_else(bad)?;
    let role = match role {
        "admin" => Role::Admin,
        "developer" => Role::Developer,
        "viewer" => Role::Viewer,
        _ => return Err(bad()),
    };
    let owner = parse_owner(who).map_err(|_| bad())?;
    Ok(Member {
        user: owner.user,
        group: owner.group,
        role,
    })
}

fn parse_owner(spec: &str) -> Result<Owner> {
    match spec.split_once(':') {
        Some(("user", n)) if !n.is_empty() => Ok(Owner {
            user: Some(n.into()),
            group: None,
        }),
        Some(("group", n)) if !n.is_empty() => Ok(Owner {
            user: None,
            group: Some(n.into()),
        }),
        _ => Err(CliError::usage(format!(
            "--owner {spec}: expected user:NAME or group:NAME"
        ))),
    }
}

pub async fn project(ctx: &Ctx, cmd: ProjectCommand) -> Result<()> {
    let api = Api::<Project>::all(ctx.client());
    match cmd {
        ProjectCommand::Create {
            name,
            display_name,
            members,
            wait,
        } => {
            let members = members
                .iter()
                .map(|m| parse_member(m))
                .collect::<Result<_>>()?;
            let obj = Project::new(
                &name,
                ProjectSpec {
                    display_name,
                    members,
                },
            );
            create(
                ctx,
                &api,
                &obj,
                &format!("Project {name}"),
                "`mahler project get` shows it; `mahler apply` changes it",
            )
            .await?;
            if wait.wait {
                wait_ready(
                    &ctx.printer,
                    api,
                    "Project",
                    &name,
                    wait.timeout,
                    project_conditions,
                    None,
                )
                .await?;
                println!("Project {name} is Ready");
            }
            Ok(())
        }
        ProjectCommand::List => {
            let items: Vec<Project> = ctx.cluster.list_visible("projects").await?;
            show(ctx, &items, false, render::projects)
        }
        ProjectCommand::Get { name } => {
            let p = ctx.cluster.project(&name).await?;
            show(ctx, &[p], true, render::projects)
        }
        ProjectCommand::Delete { name, wait } => {
            ctx.cluster.project(&name).await?;
            delete(ctx, api, &name, &format!("Project {name}"), &wait).await
        }
    }
}

pub async fn env(ctx: &Ctx, cmd: EnvCommand) -> Result<()> {
    let api = Api::<Environment>::all(ctx.client());
    let project = ctx.cluster.settings.project().map(str::to_string);
    match cmd {
        EnvCommand::Create {
            name,
            owners,
            protected,
            wait,
        } => {
            let full = full_environment_name(project.as_deref(), &name);
            let project = match project {
                Some(p) => p,
                None => {
                    // my-shop-staging → my-shop: the longest prefix that is a project.
                    let projects = Api::<Project>::all(ctx.client())
                        .list_metadata(&ListParams::default())
                        .await
                        .map_err(ctx.cluster.err("projects"))?;
                    projects
                        .items
                        .iter()
                        .map(|p| p.name_any())
                        .filter(|p| full.starts_with(&format!("{p}-")))
                        .max_by_key(|p| p.len())
                        .ok_or_else(|| {
                            CliError::usage(format!(
                                "env create {name}: no project: pass --project (environments are named <project>-<env>)"
                            ))
                        })?
                }
            };
            ctx.cluster.project(&project).await?;
            let owners = owners
                .iter()
                .map(|o| parse_owner(o))
                .collect::<Result<_>>()?;
            let obj = Environment::new(
                &full,
                EnvironmentSpec {
                    project,
                    owners,
                    protected: protected.then_some(true),
                    ..Default::default()
                },
            );
            create(
                ctx,
                &api,
                &obj,
                &format!("Environment {full}"),
                "`mahler env get` shows it",
            )
            .await?;
            if wait.wait {
                wait_ready(
                    &ctx.printer,
                    api,
                    "Environment",
                    &full,
                    wait.timeout,
                    env_conditions,
                    None,
                )
                .await?;
                println!("Environment {full} is Ready");
            }
            Ok(())
        }
        EnvCommand::List => {
            let mut items: Vec<Environment> = ctx.cluster.list_visible("environments").await?;
            if let Some(p) = &project {
                items.retain(|e| &e.spec.project == p);
            }
            show(ctx, &items, false, render::environments)
        }
        EnvCommand::Get { name } => {
            let name = ctx.cluster.environment_name(name.as_deref())?;
            let e = ctx.cluster.environment(&name).await?;
            show(ctx, &[e], true, render::environments)
        }
        EnvCommand::Delete { name, wait } => {
            let full = full_environment_name(project.as_deref(), &name);
            ctx.cluster.environment(&full).await?;
            delete(ctx, api, &full, &format!("Environment {full}"), &wait).await
        }
    }
}

fn parse_port(spec: &str, index: usize) -> Result<ServicePort> {
    let (name, port) = match spec.split_once('=') {
        Some((n, p)) => (n.to_string(), p),
        None if index == 0 => ("http".to_string(), spec),
        None => (format!("port-{index}"), spec),
    };
    let port: i32 = port
        .parse()
        .ok()
        .filter(|p| (1..=65535).contains(p))
        .ok_or_else(|| {
            CliError::usage(format!(
                "--port {spec}: expected PORT or NAME=PORT with PORT 1-65535"
            ))
        })?;
    Ok(ServicePort {
        name,
        port,
        protocol: None,
        app_protocol: None,
    })
}

fn parse_var(spec: &str) -> Result<EnvVar> {
    let (k, v) = spec
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::usage(format!("--env {spec}: expected K=V")))?;
    Ok(EnvVar {
        name: k.into(),
        value: Some(v.into()),
        value_from: None,
    })
}

fn parse_input(spec: &str) -> Result<(String, serde_json::Value)> {
    let (k, v) = spec
        .split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| CliError::usage(format!("--input {spec}: expected k=v")))?;
    let value = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.into()));
    Ok((k.into(), value))
}

pub fn service_spec(args: &ServiceCreate, vars: &[&str]) -> Result<ServiceSpec> {
    let ports = args
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| parse_port(p, i))
        .collect::<Result<Vec<_>>>()?;
    let env = vars
        .iter()
        .map(|v| parse_var(v))
        .collect::<Result<Vec<_>>>()?;
    let source = match (&args.image, &args.template) {
        (Some(image), None) => Source {
            image: Some(image.clone()),
            ..Default::default()
        },
        (None, Some(t)) => Source {
            template: Some(Box::new(TemplateSource {
                name: t.clone(),
                inputs: (!args.inputs.is_empty())
                    .then(|| {
                        args.inputs
                            .iter()
                            .map(|i| parse_input(i))
                            .collect::<Result<_>>()
                    })
                    .transpose()?,
                approval: args.manual_approval.then_some(Approval::Manual),
                ..Default::default()
            })),
            ..Default::default()
        },
        _ => {
            return Err(CliError::usage(
                "service create: pass --image or --template",
            ));
        }
    };
    Ok(ServiceSpec {
        source,
        replicas: args.replicas,
        ports,
        env,
        ..Default::default()
    })
}

pub async fn service(ctx: &Ctx, cmd: ServiceCommand) -> Result<()> {
    let ns = ctx.namespace().await?;
    let api = Api::<Service>::namespaced(ctx.client(), &ns);
    match cmd {
        ServiceCommand::Create(args) => {
            let spec = service_spec(&args, &ctx.global.variables())?;
            let mut obj = Service::new(&args.name, spec);
            obj.metadata.namespace = Some(ns.clone());
            create(
                ctx,
                &api,
                &obj,
                &format!("Service {} in {ns}", args.name),
                "`mahler deploy` changes its image; `mahler apply -f` changes the rest",
            )
            .await?;
            if args.wait.wait {
                wait_service(ctx, &ns, &args.name, args.wait.timeout).await?;
            }
            Ok(())
        }
        ServiceCommand::List => {
            let items = api
                .list(&ListParams::default())
                .await
                .map_err(ctx.cluster.err("services"))?
                .items;
            show(ctx, &items, false, render::services)
        }
        ServiceCommand::Get { name } => {
            let s = ctx.cluster.service(&ns, &name).await?;
            show(ctx, &[s], true, render::services)
        }
        ServiceCommand::Delete { name, wait } => {
            ctx.cluster.service(&ns, &name).await?;
            delete(ctx, api, &name, &format!("Service {name} in {ns}"), &wait).await
        }
    }
}

/// Waits for a Service with the full progress display.
pub async fn wait_service(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    timeout: std::time::Duration,
) -> Result<Service> {
    let api = Api::<Service>::namespaced(ctx.client(), ns);
    let svc = wait_ready(
        &ctx.printer,
        api,
        "Service",
        name,
        timeout,
        service_conditions,
        Some(Children {
            client: ctx.client(),
            namespace: ns.to_string(),
            service: name.to_string(),
        }),
    )
    .await?;
    let s = mahler_client::Summary::of_service(&svc);
    println!(
        "{} Service {name} is Ready: {}",
        ctx.printer.green("✓"),
        s.message
    );
    Ok(svc)
}

pub async fn connect(ctx: &Ctx, args: ConnectArgs) -> Result<()> {
    let ns = ctx.namespace().await?;
    for end in [&args.from, &args.to] {
        ctx.cluster.service(&ns, end).await?;
    }
    let name = args
        .name
        .clone()
        .unwrap_or(format!("{}-{}", args.from, args.to));
    let api = Api::<Connection>::namespaced(ctx.client(), &ns);
    let mut obj = Connection::new(
        &name,
        ConnectionSpec {
            from: args.from.clone(),
            to: args.to.clone(),
            port: args.port,
            env_prefix: args.env_prefix.clone(),
        },
    );
    obj.metadata.namespace = Some(ns.clone());
    create(
        ctx,
        &api,
        &obj,
        &format!("Connection {name} in {ns}"),
        "`mahler disconnect` removes it",
    )
    .await?;
    if args.wait.wait {
        wait_ready(
            &ctx.printer,
            api,
            "Connection",
            &name,
            args.wait.timeout,
            connection_conditions,
            None,
        )
        .await?;
        println!("Connection {name} is Ready");
    }
    Ok(())
}

pub async fn disconnect(ctx: &Ctx, args: DisconnectArgs) -> Result<()> {
    let ns = ctx.namespace().await?;
    let api = Api::<Connection>::namespaced(ctx.client(), &ns);
    let all = api
        .list(&ListParams::default())
        .await
        .map_err(ctx.cluster.err("connections"))?
        .items;
    let matching: Vec<&Connection> = all
        .iter()
        .filter(|c| c.spec.from == args.from && c.spec.to == args.to)
        .collect();
    if matching.is_empty() {
        let known: Vec<String> = all
            .iter()
            .map(|c| format!("{} {}", c.spec.from, c.spec.to))
            .collect();
        return Err(CliError::not_found(format!(
            "no Connection from {} to {} in {ns}{}",
            args.from,
            args.to,
            crate::suggest::did_you_mean(
                &format!("{} {}", args.from, args.to),
                known.iter().map(String::as_str)
            )
        ))
        .hint(format!("`mahler graph {ns}` shows the connections")));
    }
    for c in matching {
        api.delete(&c.name_any(), &DeleteParams::default())
            .await
            .map_err(ctx.cluster.err("Connection"))?;
        println!("{} deleted", qualified(c));
    }
    Ok(())
}

pub async fn deploy(ctx: &Ctx, args: DeployArgs) -> Result<()> {
    let ns = ctx.namespace().await?;
    let svc = ctx.cluster.service(&ns, &args.service).await?;
    if svc.spec.source.image.is_none() {
        return Err(CliError::usage(format!(
            "Service {} is not an image Service (its source is {}); deploy sets images",
            args.service,
            if svc.spec.source.template.is_some() {
                "a template"
            } else {
                "git"
            }
        )));
    }
    let api = Api::<Service>::namespaced(ctx.client(), &ns);
    // A merge patch of the one field: it does not take over the other fields
    // of whoever applied the Service (kubectl, GitOps).
    let patch = serde_json::json!({"spec": {"source": {"image": args.image}}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    let updated = api
        .patch(&args.service, &params, &Patch::Merge(&patch))
        .await
        .map_err(ctx.cluster.err(&format!("Service {}", args.service)))?;
    if updated.metadata.generation == svc.metadata.generation {
        println!(
            "Service {} already runs {} (unchanged)",
            args.service, args.image
        );
    } else {
        println!(
            "Service {} image set to {} (generation {})",
            args.service,
            args.image,
            updated.metadata.generation.unwrap_or_default()
        );
    }
    if args.wait.wait {
        wait_service(ctx, &ns, &args.service, args.wait.timeout).await?;
    }
    Ok(())
}
