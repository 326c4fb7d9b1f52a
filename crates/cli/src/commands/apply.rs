//! apply -f: server-side apply of manifests (files, directories, stdin)
//! with the field manager `mahler-cli`, saying per object whether it was
//! created, configured or left unchanged. Any kind the cluster serves works;
//! a Service applied after the Environment that makes its namespace waits
//! for that namespace. `--wait` then waits for every Mahler object.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use kube::{Client, ResourceExt};
use mahler_api::{Connection, Environment, GROUP, Project, ResourceTemplate};

use super::objects::{
    connection_conditions, env_conditions, project_conditions, template_conditions, wait_service,
};
use super::{Ctx, FIELD_MANAGER};
use crate::args::ApplyArgs;
use crate::error::{CliError, Result, api_message};
use crate::progress::wait_ready;

/// One document of one file.
struct Document {
    origin: String,
    object: DynamicObject,
    gvk: GroupVersionKind,
}

fn files_of(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| CliError::failure(format!("{}: {e}", path.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            })
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Parses multi-document YAML (or JSON) into objects with a kind.
fn parse(origin: &str, text: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let where_ = format!("{origin} (document {})", i + 1);
        let value: serde_json::Value = serde::Deserialize::deserialize(de)
            .map_err(|e| CliError::failure(format!("{where_}: {e}")))?;
        if value.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(value)
            .map_err(|e| CliError::failure(format!("{where_}: {e}")))?;
        let Some(types) = object.types.clone() else {
            return Err(CliError::failure(format!(
                "{where_}: no apiVersion and kind"
            )));
        };
        let gvk = GroupVersionKind::try_from(&types)
            .map_err(|e| CliError::failure(format!("{where_}: {e}")))?;
        if object.metadata.name.is_none() {
            return Err(CliError::failure(format!(
                "{where_}: {} without metadata.name",
                gvk.kind
            )));
        }
        docs.push(Document {
            origin: where_,
            object,
            gvk,
        });
    }
    Ok(docs)
}

fn read_all(paths: &[PathBuf]) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| CliError::failure(format!("stdin: {e}")))?;
            docs.extend(parse("stdin", &text)?);
            continue;
        }
        for file in files_of(path)? {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| CliError::failure(format!("{}: {e}", file.display())))?;
            docs.extend(parse(&file.display().to_string(), &text)?);
        }
    }
    if docs.is_empty() {
        return Err(CliError::usage(
            "nothing to apply: the files hold no objects",
        ));
    }
    Ok(docs)
}

/// Projects, then Environments and templates, then the rest: each kind
/// after what it needs.
fn rank(gvk: &GroupVersionKind) -> u8 {
    match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("", "Namespace") | ("apiextensions.k8s.io", _) => 0,
        (GROUP, "Project") => 1,
        (GROUP, "Environment") | (GROUP, "ResourceTemplate") => 2,
        (GROUP, "Service") => 3,
        (GROUP, "Connection") => 4,
        _ => 3,
    }
}

async fn resolve(
    client: &Client,
    cache: &mut BTreeMap<String, (ApiResource, ApiCapabilities)>,
    gvk: &GroupVersionKind,
    origin: &str,
) -> Result<(ApiResource, ApiCapabilities)> {
    let key = format!("{}/{}/{}", gvk.group, gvk.version, gvk.kind);
    if let Some(found) = cache.get(&key) {
        return Ok(found.clone());
    }
    match kube::discovery::pinned_kind(client, gvk).await {
        Ok(found) => {
            cache.insert(key, found.clone());
            Ok(found)
        }
        Err(kube::Error::Discovery(_)) => {
            let mut err = CliError::failure(format!(
                "{origin}: the cluster does not serve kind {} in {}",
                gvk.kind,
                if gvk.group.is_empty() {
                    gvk.version.to_string()
                } else {
                    format!("{}/{}", gvk.group, gvk.version)
                }
            ));
            if gvk.group == GROUP {
                let kinds = [
                    "Project",
                    "Environment",
                    "Service",
                    "Connection",
                    "ResourceTemplate",
                ];
                let hint = crate::suggest::did_you_mean(&gvk.kind, kinds);
                err = if hint.is_empty() {
                    err.hint("are Mahler's CRDs installed? (docs/install.md)")
                } else {
                    err.hint(format!("Mahler's kinds are {}{hint}", kinds.join(", ")))
                };
            }
            Err(err)
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Err(CliError::failure(format!(
            "{origin}: the cluster does not serve {}/{}",
            gvk.group, gvk.version
        ))
        .hint("are Mahler's CRDs installed? (docs/install.md)")),
        Err(e) => Err(crate::error::from_kube(e, origin, "the cluster")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Configured,
    Unchanged,
}

/// Objects of one rank applied at once (in order of the files, printed in that order).
const CONCURRENCY: usize = 16;

/// One object ready to apply.
struct Planned<'a> {
    doc: &'a Document,
    api: Api<DynamicObject>,
    object: DynamicObject,
    ns: Option<String>,
    label: String,
    qualified: String,
}

pub async fn run(ctx: &Ctx, args: ApplyArgs) -> Result<()> {
    let mut docs = read_all(&args.files)?;
    docs.sort_by_key(|d| rank(&d.gvk));
    let client = ctx.client();
    // Objects without a namespace go to the environment in use, else to the
    // kubeconfig's namespace.
    let default_ns = match ctx.cluster.settings.environment_name(None) {
        Some(env) => env,
        None => client.default_namespace().to_string(),
    };
    // Every kind is resolved (discovery) before anything is written, so an
    // unknown kind applies nothing.
    let mut cache = BTreeMap::new();
    let mut planned = Vec::new();
    for doc in &docs {
        let (ar, caps) = resolve(&client, &mut cache, &doc.gvk, &doc.origin).await?;
        let name = doc.object.name_any();
        let ns = match caps.scope {
            Scope::Cluster => None,
            Scope::Namespaced => Some(doc.object.namespace().unwrap_or(default_ns.clone())),
        };
        let api: Api<DynamicObject> = match &ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let mut object = doc.object.clone();
        object.metadata.namespace = ns.clone();
        let label = match &ns {
            Some(ns) => format!("{} {ns}/{name}", doc.gvk.kind),
            None => format!("{} {name}", doc.gvk.kind),
        };
        let group = if ar.group.is_empty() {
            String::new()
        } else {
            format!(".{}", ar.group)
        };
        planned.push(Planned {
            doc,
            api,
            object,
            ns,
            label,
            qualified: format!("{}{group}/{name}", ar.kind.to_lowercase()),
        });
    }
    let mut params = PatchParams::apply(FIELD_MANAGER);
    params.force = args.force_conflicts;
    params.dry_run = args.dry_run;
    let mut environments_applied = BTreeSet::new();
    let mut failed = 0usize;
    let mut applied: Vec<(String, String, Option<String>)> = Vec::new();
    let mut rest = planned.as_slice();
    while let Some(first) = rest.first() {
        let r = rank(&first.doc.gvk);
        let n = rest.iter().take_while(|p| rank(&p.doc.gvk) == r).count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        // The namespaces of Environments applied just now: the operator makes them.
        let pending: BTreeSet<&str> = group
            .iter()
            .filter_map(|p| p.ns.as_deref())
            .filter(|ns| environments_applied.contains(*ns))
            .collect();
        if !args.dry_run {
            for ns in pending {
                wait_namespace(ctx, ns).await?;
            }
        }
        let outcomes: Vec<Result<Outcome>> = futures::stream::iter(group)
            .map(|p| apply_one(ctx, &p.api, &p.object, &params))
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (p, outcome) in group.iter().zip(outcomes) {
            match outcome {
                Ok(o) => {
                    let word = match o {
                        Outcome::Created => "created",
                        Outcome::Configured => "configured",
                        Outcome::Unchanged => "unchanged",
                    };
                    let dry = if args.dry_run {
                        " (server dry run)"
                    } else {
                        ""
                    };
                    println!("{} {word}{dry}", p.qualified);
                    let name = p.object.name_any();
                    if p.doc.gvk.group == GROUP && p.doc.gvk.kind == "Environment" {
                        environments_applied.insert(name.clone());
                    }
                    if p.doc.gvk.group == GROUP {
                        applied.push((p.doc.gvk.kind.clone(), name, p.ns.clone()));
                    }
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("error: {}: {}: {}", p.doc.origin, p.label, e.message);
                }
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failure(format!(
            "{failed} of {} objects were not applied",
            docs.len()
        )));
    }
    if args.wait.wait && !args.dry_run {
        for (kind, name, ns) in applied {
            wait_for_kind(ctx, &kind, &name, ns.as_deref(), args.wait.timeout).await?;
        }
    }
    Ok(())
}

async fn apply_one(
    ctx: &Ctx,
    api: &Api<DynamicObject>,
    object: &DynamicObject,
    params: &PatchParams,
) -> Result<Outcome> {
    let name = object.name_any();
    let before = match api.get_opt(&name).await {
        Ok(b) => b,
        // No namespace yet: the apply below says so.
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(ctx.cluster.err(&name)(e)),
    };
    let after = api
        .patch(&name, params, &Patch::Apply(object))
        .await
        .map_err(|e| match e {
            kube::Error::Api(s)
                if s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces") =>
            {
                CliError::failure(api_message(&s))
                    .hint("create its Environment first (the operator makes the namespace)")
            }
            kube::Error::Api(s) if s.code == 409 => CliError::failure(format!(
                "{} (another field manager owns these fields; --force-conflicts takes them over)",
                api_message(&s)
            )),
            kube::Error::Api(s) => CliError::failure(api_message(&s)),
            e => ctx.cluster.err(&name)(e),
        })?;
    Ok(match before {
        None => Outcome::Created,
        Some(b) if unchanged(&b, &after) => Outcome::Unchanged,
        Some(_) => Outcome::Configured,
    })
}

/// Whether an apply changed nothing the user wrote. The resource version
/// alone is not enough: the operator may write the status between our read
/// and our apply. With a generation (every Mahler kind), a spec change
/// bumps it; labels and annotations do not, so they are compared too.
fn unchanged(before: &DynamicObject, after: &DynamicObject) -> bool {
    if before.resource_version() == after.resource_version() {
        return true;
    }
    let (b, a) = (&before.metadata, &after.metadata);
    b.generation.is_some()
        && b.generation == a.generation
        && b.labels == a.labels
        && b.annotations == a.annotations
        && before.data.get("spec") == after.data.get("spec")
}

/// Waits until the operator has made the namespace of an Environment.
async fn wait_namespace(ctx: &Ctx, ns: &str) -> Result<()> {
    let api = Api::<Namespace>::all(ctx.client());
    let exists = kube::runtime::wait::await_condition(api, ns, |n: Option<&Namespace>| n.is_some());
    match tokio::time::timeout(std::time::Duration::from_secs(60), exists).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(crate::error::from_wait(
            e,
            &format!("waiting for namespace {ns}"),
        )),
        Err(_) => Err(CliError::new(
            crate::error::Exit::NotReady,
            format!("namespace {ns} did not appear within 60s"),
        )
        .hint("the operator makes it from the Environment: is it running?")),
    }
}

async fn wait_for_kind(
    ctx: &Ctx,
    kind: &str,
    name: &str,
    ns: Option<&str>,
    timeout: std::time::Duration,
) -> Result<()> {
    let client = ctx.client();
    let p = &ctx.printer;
    match (kind, ns) {
        ("Service", Some(ns)) => {
            wait_service(ctx, ns, name, timeout).await?;
        }
        ("Connection", Some(ns)) => {
            wait_ready(
                p,
                Api::<Connection>::namespaced(client, ns),
                kind,
                name,
                timeout,
                connection_conditions,
                None,
            )
            .await?;
        }
        ("Project", _) => {
            wait_ready(
                p,
                Api::<Project>::all(client),
                kind,
                name,
                timeout,
                project_conditions,
                None,
            )
            .await?;
        }
        ("Environment", _) => {
            wait_ready(
                p,
                Api::<Environment>::all(client),
                kind,
                name,
                timeout,
                env_conditions,
                None,
            )
            .await?;
        }
        ("ResourceTemplate", _) => {
            wait_ready(
                p,
                Api::<ResourceTemplate>::all(client),
                kind,
                name,
                timeout,
                template_conditions,
                None,
            )
            .await?;
        }
        _ => return Ok(()),
    }
    if kind != "Service" {
        println!("{kind} {name} is Ready");
    }
    Ok(())
}
