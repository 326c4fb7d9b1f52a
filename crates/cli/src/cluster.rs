//! The connection to the cluster: the user's kubeconfig with the selected
//! context and impersonation, and the lookups every command shares (an
//! Environment, a Service, the current user), each with a one-line error
//! and a "did you mean" when the name is unknown.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use mahler_api::{Environment, Project, Service};

use crate::args::Global;
use crate::error::{CliError, Result, from_kube};
use crate::settings::{ConfigFile, Settings, Vars, config_path};
use crate::suggest::did_you_mean;

/// The kubeconfig, when there is one (none is fine for `mahler config`).
pub fn read_kubeconfig(global: &Global) -> Result<Option<Kubeconfig>> {
    let explicit = global.kubeconfig.clone();
    match explicit {
        Some(path) => Kubeconfig::read_from(&path).map(Some).map_err(|e| {
            CliError::failure(format!(
                "--kubeconfig {}: {}",
                path.display(),
                crate::error::chain(&e)
            ))
        }),
        None => {
            let default = std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".kube/config"))
                .filter(|p| p.exists());
            if std::env::var_os("KUBECONFIG").is_none_or(|v| v.is_empty()) && default.is_none() {
                return Ok(None);
            }
            Kubeconfig::read().map(Some).map_err(|e| {
                CliError::failure(format!("kubeconfig: {}", crate::error::chain(&e)))
                    .hint("check KUBECONFIG (a list of files separated by ':')")
            })
        }
    }
}

/// Settings for this invocation (no cluster contact).
pub fn settings(global: &Global) -> Result<(Settings, Option<Kubeconfig>)> {
    let kubeconfig = read_kubeconfig(global)?;
    let names: Vec<String> = kubeconfig
        .iter()
        .flat_map(|k| k.contexts.iter().map(|c| c.name.clone()))
        .collect();
    let file = ConfigFile::load(&config_path()?)?;
    let settings = Settings::resolve(global, &Vars::from_process(), &file, &names)?;
    Ok((settings, kubeconfig))
}

pub struct Cluster {
    pub client: Client,
    /// "context kwok-mahler (https://127.0.0.1:32766)", for messages.
    pub name: String,
    pub settings: Settings,
}

impl Cluster {
    pub async fn connect(global: &Global) -> Result<Cluster> {
        let (settings, kubeconfig) = settings(global)?;
        let Some(kubeconfig) = kubeconfig else {
            return Err(CliError::failure("no cluster configured: no kubeconfig found")
                .hint("set KUBECONFIG or --kubeconfig, or create ~/.kube/config (`make run` prints the local cluster's)"));
        };
        let context = settings.kube_context.as_ref().map(|s| s.value.clone());
        if let Some(c) = &context
            && !kubeconfig.contexts.iter().any(|n| &n.name == c)
        {
            return Err(CliError::not_found(format!(
                "kubeconfig has no context {c:?}{}",
                did_you_mean(c, kubeconfig.contexts.iter().map(|n| n.name.as_str()))
            ))
            .hint("`kubectl config get-contexts` lists them"));
        }
        let context_name = context
            .clone()
            .or(kubeconfig.current_context.clone())
            .unwrap_or_default();
        let options = KubeConfigOptions {
            context,
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| {
                CliError::failure(format!(
                    "kubeconfig context {context_name}: {}",
                    crate::error::chain(&e)
                ))
            })?;
        if let Some(user) = &global.as_user {
            config.auth_info.impersonate = Some(user.clone());
        }
        if !global.as_groups.is_empty() {
            config.auth_info.impersonate_groups = Some(global.as_groups.clone());
        }
        config.connect_timeout = Some(Duration::from_secs(10));
        let name = format!("context {context_name} ({})", config.cluster_url);
        let client =
            Client::try_from(config).map_err(|e| from_kube(e, "the kubeconfig", &context_name))?;
        Ok(Cluster {
            client,
            name,
            settings,
        })
    }

    pub fn err(&self, what: &str) -> impl Fn(kube::Error) -> CliError + '_ {
        let what = what.to_string();
        move |e| from_kube(e, &what, &self.name)
    }

    /// The environment to work in: `explicit`, else --env / MAHLER_ENV / the
    /// context's, expanded with the project.
    pub fn environment_name(&self, explicit: Option<&str>) -> Result<String> {
        self.settings.environment_name(explicit).ok_or_else(|| {
            CliError::usage("no environment: pass --env ENV (or set MAHLER_ENV, or a context's environment)")
                .hint("`mahler env list` shows them; `mahler config set-context NAME --env ENV --use` remembers one")
        })
    }

    /// The Environment, or "not found; did you mean".
    pub async fn environment(&self, name: &str) -> Result<Environment> {
        let api = Api::<Environment>::all(self.client.clone());
        match api.get_opt(name).await.map_err(self.err("Environment"))? {
            Some(e) => Ok(e),
            None => {
                let known = names(&api).await;
                Err(CliError::not_found(format!(
                    "Environment {name} not found{}",
                    did_you_mean(name, known.iter().map(String::as_str))
                ))
                .hint("`mahler env list` shows the environments"))
            }
        }
    }

    pub async fn project(&self, name: &str) -> Result<Project> {
        let api = Api::<Project>::all(self.client.clone());
        match api.get_opt(name).await.map_err(self.err("Project"))? {
            Some(p) => Ok(p),
            None => {
                let known = names(&api).await;
                Err(CliError::not_found(format!(
                    "Project {name} not found{}",
                    did_you_mean(name, known.iter().map(String::as_str))
                ))
                .hint("`mahler project list` shows the projects"))
            }
        }
    }

    /// The Service `name` of namespace `ns`.
    pub async fn service(&self, ns: &str, name: &str) -> Result<Service> {
        let api = Api::<Service>::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await.map_err(self.err("Service"))? {
            Some(s) => Ok(s),
            None => Err(self.missing_service(ns, name).await),
        }
    }

    pub async fn missing_service(&self, ns: &str, name: &str) -> CliError {
        let api = Api::<Service>::namespaced(self.client.clone(), ns);
        let known = names(&api).await;
        CliError::not_found(format!(
            "Service {name} not found in {ns}{}",
            did_you_mean(name, known.iter().map(String::as_str))
        ))
        .hint(format!(
            "`mahler service list --env {ns}` shows its services"
        ))
    }

    /// Who the API server says we are (SelfSubjectReview).
    pub async fn current_user(&self) -> Result<String> {
        let api = Api::<SelfSubjectReview>::all(self.client.clone());
        let review = api
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .map_err(self.err("SelfSubjectReview"))?;
        review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.username)
            .ok_or_else(|| CliError::failure("the API server did not say who you are"))
    }

    /// Every object of a cluster-scoped Mahler kind the user may see
    /// (members may not list them: `mahler_client::visible`).
    pub async fn list_visible<K>(&self, what: &str) -> Result<Vec<K>>
    where
        K: kube::Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        mahler_client::visible::list_visible(&self.client)
            .await
            .map_err(self.err(what))
    }
}

async fn names<K>(api: &Api<K>) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list_metadata(&ListParams::default())
        .await
        .map(|l| l.items.iter().map(|o| o.name_any()).collect())
        .unwrap_or_default()
}
