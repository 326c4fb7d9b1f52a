//! Template Services: a ResourceTemplate instantiated with inputs, made real
//! by the Terraform engine. Each pass is observe → decide → act:
//!
//! 1. **observe**: the Service, its status (as this process last wrote it),
//!    the workspace its template renders to, the engine's job; a finished
//!    job is folded into the status first ([`record::record`], pure) and
//!    its writes made (state Secret guard, Events, outputs Secret);
//! 2. **decide**: [`decide::decide`] (pure, table-tested in `mahler-core`);
//! 3. **act**: start the one job needed, or finish a deletion, and write
//!    the status through the one status path.
//!
//! A pass with nothing to do starts no OpenTofu process and writes nothing.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use mahler_api::names::{
    APPROVE_ANNOTATION, APPROVED_BY_ANNOTATION, DRIFTED, FORCE_DELETE_ANNOTATION, MANAGED_BY,
    SERVICE_LABEL, STATE_FINALIZER,
};
use mahler_api::{
    ConditionSet, DeletionPolicy, Environment, Health, Service, ServiceStatus, TemplateSource,
};
use mahler_core::terraform::decide::{self, Job, Problem, Requeue};
use mahler_core::terraform::record::{self, Effect, Folded};
use mahler_core::terraform::workspace::{self, Backend};
use mahler_engine::{Engine, JobState, Workspace};

use super::{Context, Error, Guarded, apply, finalizer, status};

const DEFAULT_DRIFT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

pub async fn pass(svc: &Service, ctx: &Context, src: &TemplateSource) -> Result<Action, Error> {
    let ns = svc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = svc.name_any();
    let backend = Backend::for_service(&ns, &name);
    // What this process wrote last, if the cache does not show it yet: the
    // pass builds on it, and the status write compares with the same.
    let current = ctx
        .written
        .current(svc, svc.status.as_ref())
        .map(|s| s.into_owned())
        .unwrap_or_default();
    let mut st = Folded {
        terraform: current.terraform.as_deref().cloned().unwrap_or_default(),
        outputs: current.outputs.clone(),
        outputs_secret: current.outputs_secret.clone(),
        outputs_hash: current.outputs_hash.clone(),
        // Kept unless this pass learns otherwise (a drift check or an apply).
        drifted: drifted_message(&current),
    };
    let deleting = svc.meta().deletion_timestamp.is_some();
    // By UID: a new Service of the same name never takes an old result.
    let key = format!("{ns}/{name}/{}", svc.uid().unwrap_or_default());

    // Observe: the engine's job; a finished run is recorded first, whatever happens next.
    let engine = ctx.engine.as_ref().map_err(String::as_str);
    let mut job = JobState::Idle;
    if let Ok(engine) = engine {
        st.terraform.state_secret = Some(backend.state_secret());
        job = engine.take(&key);
        if let JobState::Done(result) = job {
            if let Err(e) = record_run(ctx, svc, src, &mut st, &result).await {
                engine.put_back(&key, result);
                return Err(e);
            }
            job = JobState::Idle;
        }
    }
    let job = match &job {
        JobState::Running { kind, started } => Job::Running {
            kind,
            started: *started,
        },
        _ => Job::Idle,
    };
    // The namespace's Environment, read once: its project names the
    // workspace's context, its deletion policy is the default.
    let environment = ctx.caches.environment(&ns);
    let workspace = match engine {
        Ok(engine) => {
            render(ctx, svc, src, environment.as_ref(), engine, backend.clone()).map(|mut ws| {
                ws.plan_salt = st.terraform.last_applied_time.clone().unwrap_or_default();
                ws
            })
        }
        Err(why) => Err(Problem::new("EngineUnavailable", why)),
    };
    let terminating = ctx.caches.namespace_terminating(&ns);
    let has_finalizer = finalizer::has(svc);
    // Whether there is anything to destroy is the state's to say, not
    // status's (status can lag a run the operator did not live to record).
    let state_exists = if deleting && has_finalizer && job == Job::Idle {
        ctx.state_exists(&backend).await?
    } else {
        true
    };
    let annotations = svc.annotations();
    let drifted = st.drifted.clone();
    let state_secret = backend.state_secret();
    let observed = decide::Observed {
        name: &name,
        namespace: &ns,
        deleting,
        has_finalizer,
        engine: engine.map(|_| ()),
        job,
        workspace: workspace.as_ref().map(|ws| ws.hash.as_str()),
        terraform: &st.terraform,
        outputs_secret: st.outputs_secret.as_deref(),
        drifted: drifted.as_deref(),
        approval: src.approval.unwrap_or_default(),
        approved: annotations.get(APPROVE_ANNOTATION).map(String::as_str),
        drift_policy: src.drift_policy.unwrap_or_default(),
        drift_interval: src
            .drift_check_interval
            .as_deref()
            .and_then(mahler_core::terraform::parse_duration)
            .or(ctx.settings.drift_check_interval)
            .unwrap_or(DEFAULT_DRIFT_INTERVAL),
        deletion_policy: deletion_policy(src, environment.as_ref()),
        forced: annotations
            .get(FORCE_DELETE_ANNOTATION)
            .is_some_and(|v| v == "true"),
        state_exists,
        namespace_terminating: terminating,
        state_secret: &state_secret,
        now: Timestamp::now(),
    };

    // Decide, then act.
    let (report, start) = match decide::decide(&observed) {
        decide::Action::Nothing => return Ok(Action::await_change()),
        decide::Action::Release(release) => {
            finish_deletion(ctx, svc, &backend, &release).await?;
            return Ok(Action::await_change());
        }
        decide::Action::Report(report) => (report, None),
        decide::Action::Start(kind, report) => (report, Some(kind)),
    };
    if report.finalizer {
        finalizer::ensure(ctx, svc).await?;
    }
    if let (Some(kind), Ok(engine), Ok(ws)) = (start, ctx.engine.as_ref(), workspace) {
        let credentials = crate::terraform_identity::credentials(ctx, &backend.namespace).await?;
        engine.start(key, ws, kind, credentials, retrigger(ctx, svc));
    }
    st.drifted = report.drifted;
    write_status(ctx, svc, st, &report.health).await?;
    Ok(match report.requeue {
        Requeue::OnChange => ctx.resync(),
        Requeue::After(wait) => Action::requeue(wait.min(ctx.settings.resync)),
    })
}

/// The message of a True Drifted condition, to keep it while nothing new is known.
fn drifted_message(status: &ServiceStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == DRIFTED && c.status == "True")
        .map(|c| c.message.clone())
}

/// The Service's deletion policy, else its Environment's. An Environment
/// that cannot be read might say Retain: never destroy on a guess.
fn deletion_policy(src: &TemplateSource, environment: Option<&Environment>) -> DeletionPolicy {
    if let Some(p) = src.deletion_policy {
        return p;
    }
    match environment {
        Some(env) => env.spec.deletion_policy.unwrap_or(DeletionPolicy::Delete),
        None => DeletionPolicy::Retain,
    }
}

/// What a finished job calls: re-trigger this Service's reconcile.
fn retrigger(ctx: &Context, svc: &Service) -> impl FnOnce() + Send + 'static {
    let trigger = ctx.service_trigger.clone();
    let target = kube::runtime::reflector::ObjectRef::<Guarded<Service>>::new(&svc.name_any())
        .within(&svc.namespace().unwrap_or_default());
    move || {
        // A closed channel means the operator is stopping.
        let _ = trigger.send(target);
    }
}

/// The workspace for this Service, or what is wrong, naming the field.
fn render(
    ctx: &Context,
    svc: &Service,
    src: &TemplateSource,
    environment: Option<&Environment>,
    engine: &Engine,
    backend: Backend,
) -> Result<Workspace, Problem> {
    let template = ctx.caches.template(&src.name).ok_or_else(|| {
        Problem::new(
            "TemplateNotFound",
            format!(
                "spec.source.template.name: no ResourceTemplate named {}",
                src.name
            ),
        )
    })?;
    let inputs = src.inputs.clone().unwrap_or_default();
    let problem = |e: workspace::RenderError| {
        let message = match &e {
            workspace::RenderError::InvalidInputs(_) => e.to_string(),
            _ => format!("ResourceTemplate {}: {e}", src.name),
        };
        Problem::new(e.reason(), message)
    };
    workspace::validate_inputs(&template.spec, &inputs).map_err(problem)?;
    let trees = engine.git_trees();
    let commit = template.status.as_ref().and_then(|s| s.git_commit.clone());
    let module = workspace::module_files(
        &template.spec,
        commit.as_deref().map(|c| (trees.as_path(), c)),
    )
    .map_err(problem)?;
    let ns = svc.namespace().unwrap_or_default();
    let project = environment
        .map(|e| e.spec.project.as_str())
        .unwrap_or_default();
    let vars = workspace::context_vars(&ns, &svc.name_any(), &ns, project);
    workspace::render(module, &inputs, vars, backend, engine.fingerprint()).map_err(problem)
}

/// Folds a finished run into the status being built and makes its writes.
async fn record_run(
    ctx: &Context,
    svc: &Service,
    src: &TemplateSource,
    st: &mut Folded,
    result: &mahler_engine::JobResult,
) -> Result<(), Error> {
    let template = ctx.caches.template(&src.name);
    let declared = template
        .as_ref()
        .map(|t| t.spec.outputs.clone())
        .unwrap_or_default();
    let name = svc.name_any();
    let ns = svc.namespace().unwrap_or_default();
    let cx = record::Context {
        service: &name,
        template: template
            .as_ref()
            .map(|t| t.meta().name.as_deref().unwrap_or_default())
            .unwrap_or_default(),
        declared: &declared,
        approved_by: svc
            .annotations()
            .get(APPROVED_BY_ANNOTATION)
            .map(String::as_str),
        leaving: svc.meta().deletion_timestamp.is_some() || ctx.caches.namespace_terminating(&ns),
        now: Timestamp::now(),
    };
    for effect in record::record(st, result, &cx) {
        match effect {
            Effect::ProtectState => {
                let backend = Backend::for_service(&ns, &name);
                ctx.state_finalizer(&backend, true).await?;
            }
            Effect::Event {
                warning,
                reason,
                note,
            } => status::event(ctx, svc, warning, "Terraform", reason, &note).await,
            Effect::WriteOutputs { name, data } => {
                apply::apply(
                    ctx,
                    outputs_secret(svc, name, data),
                    apply::Observed::Absent,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// The outputs Secret `<service>-outputs`, owned by the Service.
fn outputs_secret(svc: &Service, name: String, data: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: svc.namespace(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                (SERVICE_LABEL.to_string(), svc.name_any()),
            ])),
            owner_references: svc.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Nothing is left to destroy, or it is kept: unguard the state (dropping
/// it when empty), say so, and let the Service go.
async fn finish_deletion(
    ctx: &Context,
    svc: &Service,
    backend: &Backend,
    release: &decide::Release,
) -> Result<(), Error> {
    ctx.state_finalizer(backend, false).await?;
    if release.drop_state {
        ctx.drop_state(backend).await?;
    }
    if release.state_goes_with_namespace {
        status::event(ctx, svc, true, "Delete", "StateRemoved", &format!("the namespace is being deleted, so the state Secret {} goes with it; the retained infrastructure is no longer tracked", backend.state_secret())).await;
    }
    status::event(ctx, svc, false, "Delete", "Deleted", &release.note).await;
    finalizer::remove(ctx, svc).await
}

/// Writes the status: conditions from `health` plus Drifted (an Event
/// when drift resolves), through the one status path.
async fn write_status(
    ctx: &Context,
    svc: &Service,
    st: Folded,
    health: &Health,
) -> Result<(), Error> {
    let current = ctx.written.current(svc, svc.status.as_ref());
    let current = current.as_deref();
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut set = ConditionSet(status::conditions(ctx, svc, existing, health).await);
    let was_drifted = set.get(DRIFTED).is_some_and(|c| c.status == "True");
    let generation = svc.meta().generation;
    match &st.drifted {
        Some(message) => set.set(DRIFTED, true, "DriftDetected", message, generation),
        None if set.get(DRIFTED).is_some() => set.set(DRIFTED, false, "InSync", "", generation),
        None => {}
    }
    if was_drifted && st.drifted.is_none() {
        status::event(
            ctx,
            svc,
            false,
            "Terraform",
            "DriftResolved",
            "the infrastructure matches the state again",
        )
        .await;
    }
    let status = ServiceStatus {
        observed_generation: generation,
        conditions: set.into_vec(),
        outputs: st.outputs,
        outputs_secret: st.outputs_secret,
        outputs_hash: st.outputs_hash,
        terraform: Some(Box::new(st.terraform)),
        ..Default::default()
    };
    status::patch_status(ctx, svc, current, &status).await
}

/// The engine's window on Kubernetes, and the state-Secret writes of the
/// template Service reconciler: every read and write of a backend's state
/// Secret and lock Lease goes through here.
pub struct StateAccess {
    client: kube::Client,
}

impl StateAccess {
    pub fn new(client: kube::Client) -> Self {
        StateAccess { client }
    }
    fn secrets(&self, backend: &Backend) -> kube::Api<Secret> {
        kube::Api::namespaced(self.client.clone(), &backend.namespace)
    }
    fn leases(&self, backend: &Backend) -> kube::Api<Lease> {
        kube::Api::namespaced(self.client.clone(), &backend.namespace)
    }
}

impl mahler_engine::Cluster for StateAccess {
    fn state<'a>(
        &'a self,
        backend: &'a Backend,
    ) -> futures::future::BoxFuture<'a, Result<Option<Vec<u8>>, mahler_engine::ClusterError>> {
        Box::pin(async move {
            let secret = self
                .secrets(backend)
                .get_opt(&backend.state_secret())
                .await?;
            Ok(secret
                .and_then(|s| s.data)
                .and_then(|mut d| d.remove("tfstate"))
                .map(|b| b.0))
        })
    }

    fn lock<'a>(
        &'a self,
        backend: &'a Backend,
    ) -> futures::future::BoxFuture<'a, Result<Option<Lease>, mahler_engine::ClusterError>> {
        Box::pin(async move { Ok(self.leases(backend).get_opt(&backend.lock_lease()).await?) })
    }

    fn release_lock<'a>(
        &'a self,
        backend: &'a Backend,
        lease: &'a Lease,
    ) -> futures::future::BoxFuture<'a, Result<(), mahler_engine::ClusterError>> {
        Box::pin(async move {
            let patch = mahler_core::terraform::lock::release_patch(lease);
            self.leases(backend)
                .patch(
                    &backend.lock_lease(),
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await?;
            Ok(())
        })
    }
}

impl Context {
    /// Whether the backend's state Secret exists (a metadata GET).
    async fn state_exists(&self, backend: &Backend) -> Result<bool, Error> {
        let secret = self
            .state
            .secrets(backend)
            .get_metadata_opt(&backend.state_secret())
            .await
            .map_err(Error::Kube)?;
        Ok(secret.is_some())
    }

    /// Adds or removes [`STATE_FINALIZER`] on the state Secret, through the
    /// one finalizer path.
    async fn state_finalizer(&self, backend: &Backend, protect: bool) -> Result<(), Error> {
        let Some(secret) = self
            .state
            .secrets(backend)
            .get_metadata_opt(&backend.state_secret())
            .await
            .map_err(Error::Kube)?
        else {
            return Ok(());
        };
        if protect {
            finalizer::add(self, &secret, STATE_FINALIZER).await
        } else {
            finalizer::strip(self, &secret, STATE_FINALIZER).await
        }
    }

    /// Deletes the (empty) state Secret and the lock Lease after a destroy.
    async fn drop_state(&self, backend: &Backend) -> Result<(), Error> {
        apply::delete_named::<Secret>(self, Some(&backend.namespace), &backend.state_secret())
            .await?;
        apply::delete_named::<Lease>(self, Some(&backend.namespace), &backend.lock_lease()).await
    }
}
