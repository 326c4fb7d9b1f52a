//! The identity template Services' OpenTofu runs with. Template modules are
//! code, so they do not get the operator's cluster-wide rights: each job
//! runs as the ServiceAccount `mahler-terraform` of its environment's
//! namespace, bound there (and only there) to the chart's
//! `<release>-terraform` ClusterRole, with a token that expires.

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use mahler_api::names::{FIELD_MANAGER, MANAGED_BY};
use mahler_engine::Credentials;

use crate::{Context, Error};

/// How template Services' OpenTofu reaches the API server as its own
/// identity (the operator's flags `--terraform-role`, and the API server
/// the operator itself talks to).
#[derive(Clone, Debug)]
pub struct TerraformIdentity {
    /// The ClusterRole bound in each environment namespace.
    pub role: String,
    /// The ServiceAccount created in each environment namespace.
    pub service_account: String,
    pub host: String,
    pub ca_pem: Option<String>,
    pub insecure: bool,
    /// Lifetime of a job's token.
    pub token_seconds: i64,
}

/// Credentials for a job in `namespace`: the ServiceAccount and its
/// RoleBinding applied (server-side, idempotent), then a fresh token.
/// `None` when the operator runs OpenTofu with its own identity.
pub async fn credentials(ctx: &Context, namespace: &str) -> Result<Option<Credentials>, Error> {
    let Some(id) = &ctx.settings.terraform_identity else {
        return Ok(None);
    };
    let meta = ObjectMeta {
        name: Some(id.service_account.clone()),
        namespace: Some(namespace.to_string()),
        labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
        ..Default::default()
    };
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let accounts: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), namespace);
    let account = ServiceAccount {
        metadata: meta.clone(),
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    accounts
        .patch(&id.service_account, &apply, &Patch::Apply(&account))
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.wrote("ServiceAccount", "apply");
    let binding = RoleBinding {
        metadata: meta,
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: id.role.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: id.service_account.clone(),
            namespace: Some(namespace.to_string()),
            api_group: None,
        }]),
    };
    Api::<RoleBinding>::namespaced(ctx.client.clone(), namespace)
        .patch(&id.service_account, &apply, &Patch::Apply(&binding))
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.wrote("RoleBinding", "apply");
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(id.token_seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let token = accounts
        .create_token_request(&id.service_account, &PostParams::default(), &request)
        .await
        .map_err(Error::Kube)?
        .status
        .and_then(|s| s.token)
        .unwrap_or_default();
    Ok(Some(Credentials {
        host: id.host.clone(),
        token,
        ca_pem: id.ca_pem.clone(),
        insecure: id.insecure,
    }))
}
