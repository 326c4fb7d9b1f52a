//! config: Mahler contexts in the config file, and `view`, which prints
//! every setting in effect with where it came from.

use super::super::args::{ConfigCommand, Global, Output};
use crate::cluster::settings;
use crate::error::{CliError, Result};
use crate::output::render_table;
use crate::settings::{ConfigFile, Context, Setting, config_path};

pub fn run(global: &Global, cmd: ConfigCommand) -> Result<()> {
    let path = config_path()?;
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ConfigCommand::Path => println!("{}", path.display()),
        ConfigCommand::GetContexts => {
            if file.contexts.is_empty() {
                println!(
                    "No Mahler contexts. Create one: mahler config set-context NAME --kube-context CTX --project P --env E --use"
                );
                return Ok(());
            }
            let rows = file
                .contexts
                .iter()
                .map(|(name, c)| {
                    vec![
                        if file.current_context.as_deref() == Some(name) {
                            "*".into()
                        } else {
                            String::new()
                        },
                        name.clone(),
                        c.kube_context.clone().unwrap_or_default(),
                        c.project.clone().unwrap_or_default(),
                        c.environment.clone().unwrap_or_default(),
                        c.output.map(|o| o.as_str().to_string()).unwrap_or_default(),
                    ]
                })
                .collect();
            print!(
                "{}",
                render_table(
                    &[
                        "current",
                        "name",
                        "kube context",
                        "project",
                        "environment",
                        "output"
                    ],
                    rows,
                    None
                )
            );
        }
        ConfigCommand::CurrentContext => match &file.current_context {
            Some(c) => println!("{c}"),
            None => {
                return Err(CliError::not_found("no current Mahler context")
                    .hint("`mahler config use-context NAME`"));
            }
        },
        ConfigCommand::UseContext { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(CliError::not_found(format!(
                    "no Mahler context {name:?}{}",
                    crate::suggest::did_you_mean(&name, file.contexts.keys().map(String::as_str))
                ))
                .hint("`mahler config set-context NAME ...` creates it"));
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            println!("Switched to Mahler context {name:?}.");
        }
        ConfigCommand::SetContext { name, use_it } => {
            let entry = file
                .contexts
                .entry(name.clone())
                .or_insert_with(Context::default);
            if let Some(k) = &global.kube_context {
                entry.kube_context = Some(k.clone());
            }
            if let Some(p) = &global.project {
                entry.project = Some(p.clone());
            }
            if let Some(e) = global.environment() {
                entry.environment = Some(e.to_string());
            }
            if let Some(o) = global.output {
                if matches!(o, Output::Dot | Output::Mermaid) {
                    return Err(CliError::usage(
                        "--output: a context's default is table, wide, json, yaml or name",
                    ));
                }
                entry.output = Some(o);
            }
            if use_it {
                file.current_context = Some(name.clone());
            }
            file.save(&path)?;
            println!(
                "Mahler context {name:?} saved in {}{}.",
                path.display(),
                if use_it { " and in use" } else { "" }
            );
        }
        ConfigCommand::DeleteContext { name } => {
            if file.contexts.remove(&name).is_none() {
                return Err(CliError::not_found(format!("no Mahler context {name:?}")));
            }
            if file.current_context.as_deref() == Some(&name) {
                file.current_context = None;
            }
            file.save(&path)?;
            println!("Deleted Mahler context {name:?}.");
        }
        ConfigCommand::View => {
            let (s, kubeconfig) = settings(global)?;
            let ctx = s.context.as_ref().map(|c| c.value.as_str());
            let describe = |setting: Option<&Setting<String>>, var: &str| match setting {
                Some(v) => (v.value.clone(), v.source.describe(var, ctx)),
                None => ("<none>".to_string(), "-".to_string()),
            };
            let kube_current = kubeconfig.as_ref().and_then(|k| k.current_context.clone());
            let (kube, kube_from) = match &s.kube_context {
                Some(v) => (v.value.clone(), v.source.describe("MAHLER_CONTEXT", ctx)),
                None => (
                    kube_current.unwrap_or_else(|| "<no kubeconfig>".into()),
                    "kubeconfig".into(),
                ),
            };
            let rows = vec![
                vec![
                    "config file".to_string(),
                    path.display().to_string(),
                    if path.exists() {
                        "exists".into()
                    } else {
                        "not created yet".into()
                    },
                ],
                {
                    let (v, f) = describe(s.context.as_ref(), "MAHLER_CONTEXT");
                    let from_file = s
                        .context
                        .as_ref()
                        .is_some_and(|c| c.source == crate::settings::Source::Context);
                    let f = if from_file {
                        "current-context".to_string()
                    } else {
                        f
                    };
                    vec!["context".into(), v, f]
                },
                vec!["kube context".into(), kube, kube_from],
                {
                    let (v, f) = describe(s.project.as_ref(), "MAHLER_PROJECT");
                    vec!["project".into(), v, f]
                },
                {
                    let (v, f) = describe(s.environment.as_ref(), "MAHLER_ENV");
                    vec!["environment".into(), v, f]
                },
                vec![
                    "output".into(),
                    s.output.value.as_str().into(),
                    s.output.source.describe("MAHLER_OUTPUT", ctx),
                ],
            ];
            print!(
                "{}",
                render_table(&["setting", "value", "from"], rows, None)
            );
            if let Some(env) = s.environment_name(None)
                && s.environment.as_ref().is_some_and(|e| e.value != env)
            {
                println!(
                    "(environment {} expands to {env} with the project)",
                    s.environment.as_ref().unwrap().value
                );
            }
        }
    }
    Ok(())
}
