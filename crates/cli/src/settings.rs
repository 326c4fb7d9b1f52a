//! Mahler contexts and the settings in effect.
//!
//! A Mahler context names a kubeconfig context, a default project and
//! environment and an output format. They live in
//! `$MAHLER_CONFIG`, else `$XDG_CONFIG_HOME/mahler/config.yaml`, else
//! `~/.config/mahler/config.yaml`. Each setting is taken from the first of:
//! a flag, a `MAHLER_*` variable, the selected Mahler context, the
//! kubeconfig (docs/cli.md, "Settings").

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::args::{Global, Output};
use crate::error::{CliError, Result};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kube_context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
}

/// The config file's path.
pub fn config_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MAHLER_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    use etcetera::BaseStrategy;
    let xdg = etcetera::base_strategy::Xdg::new()
        .map_err(|e| CliError::failure(format!("cannot find your config directory: {e}")))?;
    Ok(xdg.config_dir().join("mahler").join("config.yaml"))
}

impl ConfigFile {
    /// Reads the config file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(ConfigFile::default()),
            Ok(text) => serde_yaml::from_str(&text).map_err(|e| {
                CliError::failure(format!("{}: {e}", path.display()))
                    .hint("fix or remove the file (MAHLER_CONFIG points at another one)")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(CliError::failure(format!("{}: {e}", path.display()))),
        }
    }

    /// Writes it atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> Result<()> {
        let fail = |e: std::io::Error| CliError::failure(format!("{}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = serde_yaml::to_string(self).expect("config serialises");
        let tmp = path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text).map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// Where a setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Flag,
    Env,
    Context,
    Kubeconfig,
    Default,
}

impl Source {
    pub fn describe(&self, var: &str, context: Option<&str>) -> String {
        match self {
            Source::Flag => "flag".into(),
            Source::Env => var.to_string(),
            Source::Context => format!("context {}", context.unwrap_or_default()),
            Source::Kubeconfig => "kubeconfig".into(),
            Source::Default => "default".into(),
        }
    }
}

/// One resolved setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Setting<T> {
    pub value: T,
    pub source: Source,
}

/// The settings in effect for this invocation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Settings {
    /// The selected Mahler context, if any.
    pub context: Option<Setting<String>>,
    /// The kubeconfig context (None: the kubeconfig's current one).
    pub kube_context: Option<Setting<String>>,
    pub project: Option<Setting<String>>,
    pub environment: Option<Setting<String>>,
    pub output: Setting<Output>,
}

/// What the environment variables hold (read once, passed in for tests).
#[derive(Clone, Debug, Default)]
pub struct Vars {
    pub context: Option<String>,
    pub project: Option<String>,
    pub environment: Option<String>,
    pub output: Option<String>,
}

impl Vars {
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Vars {
            context: var("MAHLER_CONTEXT"),
            project: var("MAHLER_PROJECT"),
            environment: var("MAHLER_ENV"),
            output: var("MAHLER_OUTPUT"),
        }
    }
}

fn pick<T: Clone>(flag: Option<T>, env: Option<T>, context: Option<T>) -> Option<Setting<T>> {
    flag.map(|value| Setting {
        value,
        source: Source::Flag,
    })
    .or(env.map(|value| Setting {
        value,
        source: Source::Env,
    }))
    .or(context.map(|value| Setting {
        value,
        source: Source::Context,
    }))
}

impl Settings {
    /// Resolves flags > MAHLER_* > Mahler context. `kube_contexts` are the
    /// kubeconfig's context names: `--context X` naming no Mahler context
    /// but a kubeconfig context selects that one (as kubectl's `--context`).
    pub fn resolve(
        global: &Global,
        vars: &Vars,
        file: &ConfigFile,
        kube_contexts: &[String],
    ) -> Result<Settings> {
        let named = pick(
            global.context.clone(),
            vars.context.clone(),
            file.current_context.clone(),
        );
        let mut kube_from_name = None;
        let (context, ctx) = match named {
            None => (None, Context::default()),
            Some(s) => match file.contexts.get(&s.value) {
                Some(c) => (Some(s.clone()), c.clone()),
                None if s.source != Source::Context && kube_contexts.contains(&s.value) => {
                    kube_from_name = Some(Setting {
                        value: s.value.clone(),
                        source: s.source,
                    });
                    (None, Context::default())
                }
                None => {
                    let mut known: Vec<&str> = file.contexts.keys().map(String::as_str).collect();
                    known.extend(kube_contexts.iter().map(String::as_str));
                    let origin = match s.source {
                        Source::Flag => "--context",
                        Source::Env => "MAHLER_CONTEXT",
                        _ => "current-context in the config file",
                    };
                    return Err(CliError::not_found(format!(
                        "{origin}: no Mahler or kubeconfig context {:?}{}",
                        s.value,
                        crate::suggest::did_you_mean(&s.value, known)
                    ))
                    .hint("`mahler config get-contexts` lists them"));
                }
            },
        };
        let output = match (&global.output, &vars.output) {
            (Some(o), _) => Setting {
                value: *o,
                source: Source::Flag,
            },
            (None, Some(o)) => Setting {
                value: <Output as clap::ValueEnum>::from_str(o, true).map_err(|_| {
                    CliError::usage(format!(
                        "MAHLER_OUTPUT={o}: expected table, wide, json, yaml or name"
                    ))
                })?,
                source: Source::Env,
            },
            (None, None) => match ctx.output {
                Some(o) => Setting {
                    value: o,
                    source: Source::Context,
                },
                None => Setting {
                    value: Output::Table,
                    source: Source::Default,
                },
            },
        };
        Ok(Settings {
            kube_context: pick(global.kube_context.clone(), None, ctx.kube_context.clone())
                .or(kube_from_name),
            project: pick(global.project.clone(), vars.project.clone(), ctx.project),
            environment: pick(
                global.environment().map(str::to_string),
                vars.environment.clone(),
                ctx.environment,
            ),
            context,
            output,
        })
    }

    pub fn project(&self) -> Option<&str> {
        self.project.as_ref().map(|s| s.value.as_str())
    }

    /// The environment's full name: as given, or `<project>-<name>` when a
    /// project is set and the name does not start with `<project>-`.
    pub fn environment_name(&self, explicit: Option<&str>) -> Option<String> {
        let name = explicit.or(self.environment.as_ref().map(|s| s.value.as_str()))?;
        Some(full_environment_name(self.project(), name))
    }
}

pub fn full_environment_name(project: Option<&str>, name: &str) -> String {
    match project {
        Some(p) if !name.starts_with(&format!("{p}-")) => format!("{p}-{name}"),
        _ => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> ConfigFile {
        serde_yaml::from_str(
            "current-context: dev\ncontexts:\n  dev: {kube-context: kind-dev, project: shop, environment: staging, output: wide}\n  prod: {project: shop, environment: prod}\n",
        )
        .unwrap()
    }

    #[test]
    fn flags_beat_variables_beat_the_context() {
        let vars = Vars {
            project: Some("env-project".into()),
            ..Default::default()
        };
        let global = Global {
            environment: vec!["preview".into()],
            ..Default::default()
        };
        let s = Settings::resolve(&global, &vars, &file(), &[]).unwrap();
        assert_eq!(s.context.as_ref().unwrap().value, "dev");
        assert_eq!(s.project.as_ref().unwrap().source, Source::Env);
        assert_eq!(s.environment.as_ref().unwrap().source, Source::Flag);
        assert_eq!(
            s.environment_name(None).as_deref(),
            Some("env-project-preview")
        );
        assert_eq!(
            (s.output.value, s.output.source),
            (Output::Wide, Source::Context)
        );
        assert_eq!(s.kube_context.unwrap().value, "kind-dev");
    }

    #[test]
    fn a_context_flag_may_name_a_kubeconfig_context() {
        let global = Global {
            context: Some("kwok-mahler".into()),
            ..Default::default()
        };
        let s =
            Settings::resolve(&global, &Vars::default(), &file(), &["kwok-mahler".into()]).unwrap();
        assert_eq!(s.context, None);
        assert_eq!(s.kube_context.unwrap().value, "kwok-mahler");
        let err = Settings::resolve(
            &Global {
                context: Some("prd".into()),
                ..Default::default()
            },
            &Vars::default(),
            &file(),
            &[],
        )
        .unwrap_err();
        assert!(
            err.message.contains("did you mean \"prod\""),
            "{}",
            err.message
        );
    }

    #[test]
    fn environment_names_expand_with_the_project() {
        assert_eq!(
            full_environment_name(Some("shop"), "staging"),
            "shop-staging"
        );
        assert_eq!(
            full_environment_name(Some("shop"), "shop-staging"),
            "shop-staging"
        );
        assert_eq!(full_environment_name(None, "staging"), "staging");
    }
}
