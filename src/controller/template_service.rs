//! Template Services: a ResourceTemplate instantiated with inputs, made real
//! by the Terraform engine. Each pass reads the Service, its template and the
//! engine's job state, then either does nothing (the workspace hash matches
//! the last good apply and no drift check is due: no OpenTofu process at
//! all), records a finished run, or starts the one run that is needed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use super::{Context, Error, Guarded, apply, finalizer, status};
use crate::MANAGED_BY;
use crate::crd::{
    Approval, ConditionSet, DeletionPolicy, DriftPolicy, Health, LockStatus, ResourceTemplate,
    RunStatus, Service, ServiceStatus, TemplateSource, TerraformStatus,
};
use crate::terraform::workspace::{self, Backend};
use crate::terraform::{Engine, JobKind, JobResult, JobState, Outcome, OutputValue, Workspace};

/// `kubectl annotate msvc NAME mahler.dev/approve-plan=<plan id>` approves a plan.
pub const APPROVE_ANNOTATION: &str = "mahler.dev/approve-plan";
/// Who approved (set with the approval; the shipped admission policy checks
/// it is the requesting user and an environment owner).
pub const APPROVED_BY_ANNOTATION: &str = "mahler.dev/approved-by";
/// Condition type reporting drift.
pub const DRIFTED: &str = "Drifted";

const DEFAULT_DRIFT_INTERVAL: Duration = Duration::from_secs(3600);

pub async fn pass(svc: &Service, ctx: &Context, src: &TemplateSource) -> Result<Action, Error> {
    let ns = svc
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = svc.name_any();
    // What this process wrote last, if the cache does not show it yet: the
    // pass builds on it, and `finish` compares with the same.
    let current = ctx
        .written
        .current(svc, svc.status.as_ref())
        .map(|s| s.into_owned())
        .unwrap_or_default();
    let mut st = Pass {
        status: ServiceStatus {
            observed_generation: svc.meta().generation,
            outputs: current.outputs.clone(),
            outputs_secret: current.outputs_secret.clone(),
            outputs_hash: current.outputs_hash.clone(),
            terraform: None,
            ..Default::default()
        },
        tf: current.terraform.as_deref().cloned().unwrap_or_default(),
        // Kept unless this pass learns otherwise (a drift check or an apply).
        drifted: drifted_message(&current),
    };
    let backend = Backend::for_service(&ns, &name);
    if ctx.engine.is_none() && svc.meta().deletion_timestamp.is_some() {
        return delete(ctx, svc, st, src, None, "", backend, None).await;
    }
    let Some(engine) = ctx.engine.clone() else {
        let why = ctx
            .engine_error
            .clone()
            .unwrap_or_else(|| "the Terraform engine is not configured".into());
        return finish(
            ctx,
            svc,
            st,
            Health::stalled("EngineUnavailable", why),
            None,
        )
        .await;
    };
    // By UID: a new Service of the same name never takes an old result.
    let key = format!("{ns}/{name}/{}", svc.uid().unwrap_or_default());
    st.tf.state_secret = Some(backend.state_secret());

    // A finished run is recorded first, whatever happens next.
    let mut running = None;
    match engine.take(&key) {
        JobState::Idle => {}
        JobState::Running { kind, started, .. } => running = Some((kind, started)),
        JobState::Done(result) => {
            let template = ctx.caches.template(&src.name);
            if let Err(e) = record(ctx, svc, &mut st, &result, template.as_ref()).await {
                engine.put_back(&key, result);
                return Err(e);
            }
        }
    }

    if svc.meta().deletion_timestamp.is_some() {
        return delete(ctx, svc, st, src, Some(&engine), &key, backend, running).await;
    }
    if let Some((kind, started)) = running {
        // A drift check of applied infrastructure leaves it Ready (and the
        // status unchanged): only what it finds is news.
        if matches!(kind, JobKind::DriftCheck { .. }) && st.tf.applied_hash.is_some() {
            let health = Health::ready(ready_message(&st, "applied"));
            return finish(ctx, svc, st, health, Some(ctx.resync())).await;
        }
        let health = Health::progressing(
            running_reason(&kind),
            format!(
                "tofu {} running since {started}",
                kind.operation().to_lowercase()
            ),
        );
        return finish(ctx, svc, st, health, Some(ctx.resync())).await;
    }
    finalizer::ensure(ctx, svc).await?;

    let ws = match render(ctx, svc, src, &engine, backend) {
        Ok(mut ws) => {
            ws.plan_salt = st.tf.last_applied_time.clone().unwrap_or_default();
            ws
        }
        Err(("WaitingForTemplate", message)) => {
            let health = Health::progressing("WaitingForTemplate", message);
            return finish(ctx, svc, st, health, None).await;
        }
        Err((reason, message)) => {
            return finish(ctx, svc, st, Health::stalled(reason, message), None).await;
        }
    };

    let approval = src.approval.unwrap_or_default();
    let applied = st.tf.applied_hash.as_deref() == Some(ws.hash.as_str());
    let annotations = svc.annotations();
    let approved = annotations.get(APPROVE_ANNOTATION);
    let pending = st
        .tf
        .plan
        .clone()
        .filter(|p| p.phase == "Pending" && p.workspace_hash == ws.hash);

    // A failed run of this same workspace is retried with backoff, not at once.
    if let Some(retry_in) = backoff_remaining(&st.tf, &ws.hash) {
        let run = st.tf.last_run.clone().unwrap_or_default();
        let health = Health::stalled(
            failure_reason(&run),
            format!(
                "{} (retrying at {}, or at once when the spec changes)",
                run.message.unwrap_or_default(),
                retry_at(retry_in)
            ),
        );
        return finish(ctx, svc, st, health, Some(Action::requeue(retry_in))).await;
    }
    if let Some((wait, message)) = lock_wait(&st.tf) {
        let health = Health::progressing("LockHeld", message);
        return finish(ctx, svc, st, health, Some(Action::requeue(wait))).await;
    }

    let start = |kind: JobKind| engine.start(key.clone(), ws.clone(), kind, retrigger(ctx, svc));

    // An approved pending plan (manual approval, or drift held for approval).
    if let Some(plan) = &pending
        && approved == Some(&plan.id)
    {
        start(JobKind::ApplyApproved(plan.id.clone()));
        let health = Health::progressing("Applying", format!("applying approved plan {}", plan.id));
        return finish(ctx, svc, st, health, Some(ctx.resync())).await;
    }

    if !applied {
        if approval == Approval::Manual {
            if let Some(plan) = &pending {
                let health = Health::progressing("AwaitingApproval", awaiting(svc, plan));
                return finish(ctx, svc, st, health, None).await;
            }
            start(JobKind::PlanOnly);
            let health = Health::progressing(
                "Planning",
                "tofu plan running (manual approval: the plan will wait for an owner)",
            );
            return finish(ctx, svc, st, health, Some(ctx.resync())).await;
        }
        start(JobKind::Converge);
        let health = Health::progressing("Applying", "tofu plan and apply running");
        return finish(ctx, svc, st, health, Some(ctx.resync())).await;
    }

    // Applied. Is a drift check due?
    let interval = src
        .drift_check_interval
        .as_deref()
        .and_then(crate::terraform::parse_duration)
        .unwrap_or(
            ctx.settings
                .drift_check_interval
                .unwrap_or(DEFAULT_DRIFT_INTERVAL),
        );
    let since_check = st
        .tf
        .last_drift_check_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .and_then(|t| Timestamp::now().since(t).ok())
        .and_then(|s| s.total(k8s_openapi::jiff::Unit::Second).ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    let policy = src.drift_policy.unwrap_or_default();
    if !interval.is_zero() && since_check.is_none_or(|s| s >= interval) {
        let correct = policy == DriftPolicy::Correct && approval == Approval::Auto;
        start(JobKind::DriftCheck { correct });
        let health = Health::ready(ready_message(&st, "applied"));
        return finish(ctx, svc, st, health, Some(ctx.resync())).await;
    }
    if let Some(plan) = &pending {
        // Drift found and held for approval / by policy.
        let message = if policy == DriftPolicy::Hold {
            format!(
                "drift held by driftPolicy Hold: plan {} would change {} resource(s)",
                plan.id,
                plan.add + plan.change + plan.destroy
            )
        } else {
            awaiting(svc, plan)
        };
        st.drifted = Some(message);
    }
    let health = Health::ready(ready_message(&st, "applied"));
    let next_check = interval.saturating_sub(since_check.unwrap_or_default());
    let requeue = if interval.is_zero() {
        ctx.resync()
    } else {
        Action::requeue(
            next_check
                .min(ctx.settings.resync)
                .max(Duration::from_secs(1)),
        )
    };
    finish(ctx, svc, st, health, Some(requeue)).await
}

/// Status being built in one pass.
struct Pass {
    status: ServiceStatus,
    tf: TerraformStatus,
    /// `Some(message)`: the Drifted condition is True.
    drifted: Option<String>,
}

/// The message of a True Drifted condition, to keep it while nothing new is known.
fn drifted_message(status: &ServiceStatus) -> Option<String> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == DRIFTED && c.status == "True")
        .map(|c| c.message.clone())
}

fn running_reason(kind: &JobKind) -> &'static str {
    match kind {
        JobKind::Converge | JobKind::ApplyApproved(_) => "Applying",
        JobKind::PlanOnly => "Planning",
        JobKind::DriftCheck { .. } => "CheckingDrift",
        JobKind::Destroy { .. } => "Destroying",
    }
}

fn awaiting(svc: &Service, plan: &crate::crd::PlanStatus) -> String {
    let changes: Vec<String> = plan
        .resources
        .iter()
        .map(|r| format!("{} {}", r.action, r.address))
        .collect();
    format!(
        "plan {} ({} to add, {} to change, {} to destroy: {}) awaits approval by an environment owner: kubectl annotate msvc {} -n {} {APPROVE_ANNOTATION}={} {APPROVED_BY_ANNOTATION}=<your user name>",
        plan.id,
        plan.add,
        plan.change,
        plan.destroy,
        changes.join(", "),
        svc.name_any(),
        svc.namespace().unwrap_or_default(),
        plan.id
    )
}

fn ready_message(st: &Pass, what: &str) -> String {
    let plan = st
        .tf
        .plan
        .as_ref()
        .map(|p| format!(" (plan {})", p.id))
        .unwrap_or_default();
    let secret = st
        .status
        .outputs_secret
        .as_ref()
        .map(|s| format!("; outputs in Secret {s}"))
        .unwrap_or_default();
    format!("{what}{plan}{secret}")
}

/// While the last run found the state lock held (someone may still be
/// working), wait 15 s from that run before trying again: whatever the job.
/// Returns the wait and what holds the lock.
fn lock_wait(tf: &TerraformStatus) -> Option<(Duration, String)> {
    let run = tf.last_run.as_ref()?;
    if run.result != "Blocked" || !recently(tf, LOCK_RETRY) {
        return None;
    }
    let message = tf.lock.as_ref().and_then(|l| l.message.clone());
    Some((LOCK_RETRY, message.unwrap_or_default()))
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

const LOCK_RETRY: Duration = Duration::from_secs(15);

/// A retry time that stays the same across passes (so status does not
/// change, and is not rewritten, while waiting).
fn retry_at(wait: Duration) -> String {
    let at = Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
            wait.as_secs() as i64
        ))
        .unwrap_or_else(|_| Timestamp::now());
    // Whole seconds; passes within the same second agree.
    at.round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| at.to_string())
}

fn recently(tf: &TerraformStatus, within: Duration) -> bool {
    let finished = tf.last_run.as_ref().and_then(|r| {
        let started = r.started_time.parse::<Timestamp>().ok()?;
        let ms = r.duration_millis.unwrap_or_default();
        started
            .checked_add(k8s_openapi::jiff::SignedDuration::from_millis(ms))
            .ok()
    });
    finished
        .and_then(|f| Timestamp::now().since(f).ok())
        .and_then(|s| s.total(k8s_openapi::jiff::Unit::Second).ok())
        .is_some_and(|s| s < within.as_secs_f64())
}

/// Time left before a failed workspace may be retried: 30 s doubling per
/// consecutive failure, at most 30 min.
fn backoff_remaining(tf: &TerraformStatus, hash: &str) -> Option<Duration> {
    let run = tf.last_run.as_ref()?;
    if matches!(run.result.as_str(), "Succeeded" | "Blocked")
        || run.workspace_hash.as_deref() != Some(hash)
    {
        return None;
    }
    let failures = run.failures.unwrap_or(1).clamp(1, 7);
    let wait =
        Duration::from_secs(30 * 2u64.pow(failures as u32 - 1)).min(Duration::from_secs(1800));
    let started = run.started_time.parse::<Timestamp>().ok()?;
    let elapsed = Timestamp::now()
        .since(started)
        .ok()?
        .total(k8s_openapi::jiff::Unit::Second)
        .ok()?;
    let elapsed = Duration::from_secs_f64(elapsed.max(0.0)).saturating_sub(Duration::from_millis(
        run.duration_millis.unwrap_or_default().max(0) as u64,
    ));
    (elapsed < wait).then(|| wait - elapsed)
}

fn failure_reason(run: &RunStatus) -> &'static str {
    match run.message.as_deref() {
        Some(m) if m.starts_with("init:") => "InitFailed",
        Some(m) if m.starts_with("plan:") => "PlanFailed",
        Some(m) if m.starts_with("apply:") => "ApplyFailed",
        Some(m) if m.starts_with("outputs:") => "OutputMissing",
        _ => "RunFailed",
    }
}

/// The workspace for this Service, or the (reason, message) naming what is wrong.
fn render(
    ctx: &Context,
    svc: &Service,
    src: &TemplateSource,
    engine: &Engine,
    backend: Backend,
) -> Result<Workspace, (&'static str, String)> {
    let template = ctx.caches.template(&src.name).ok_or_else(|| {
        (
            "TemplateNotFound",
            format!(
                "spec.source.template.name: no ResourceTemplate named {}",
                src.name
            ),
        )
    })?;
    let inputs = src.inputs.clone().unwrap_or_default();
    let stalled = |e: workspace::RenderError| {
        let msg = match &e {
            workspace::RenderError::InvalidInputs(_) => e.to_string(),
            _ => format!("ResourceTemplate {}: {e}", src.name),
        };
        (e.reason(), msg)
    };
    workspace::validate_inputs(&template.spec, &inputs).map_err(stalled)?;
    let trees = engine.git_trees();
    let commit = template.status.as_ref().and_then(|s| s.git_commit.clone());
    let module = workspace::module_files(
        &template.spec,
        commit.as_deref().map(|c| (trees.as_path(), c)),
    )
    .map_err(stalled)?;
    let ns = svc.namespace().unwrap_or_default();
    let env = ctx
        .caches
        .environments
        .get(&kube::runtime::reflector::ObjectRef::new(&ns))
        .and_then(|g| g.0.clone().ok());
    let project = env
        .as_ref()
        .map(|e| e.spec.project.clone())
        .unwrap_or_default();
    let vars = workspace::context_vars(&ns, &svc.name_any(), &ns, &project);
    workspace::render(module, &inputs, vars, backend, engine.fingerprint()).map_err(stalled)
}

/// Folds a finished run into status, writes the outputs Secret and
/// publishes Events.
async fn record(
    ctx: &Context,
    svc: &Service,
    st: &mut Pass,
    result: &JobResult,
    template: Option<&ResourceTemplate>,
) -> Result<(), Error> {
    let now = Timestamp::now().to_string();
    let previous_failures = st
        .tf
        .last_run
        .as_ref()
        .filter(|r| {
            r.result != "Succeeded" && r.workspace_hash.as_deref() == Some(&result.workspace_hash)
        })
        .and_then(|r| r.failures)
        .unwrap_or(0);
    let mut run = RunStatus {
        operation: result.kind.operation().to_string(),
        result: "Succeeded".into(),
        started_time: result.started.to_string(),
        duration_millis: Some(result.duration.as_millis() as i64),
        message: None,
        workspace_hash: Some(result.workspace_hash.clone()),
        failures: None,
    };
    for (warning, reason, note) in &result.notes {
        status::event(ctx, svc, *warning, reason, note).await;
        if *reason == "LockRecovered" {
            st.tf.lock = Some(LockStatus {
                state: "Recovered".into(),
                message: Some(note.clone()),
            });
        }
    }
    // Any run that may have written state (even a failed, partial apply)
    // makes the state precious: guard it before anything else can go wrong.
    if !matches!(
        result.outcome,
        Outcome::Destroyed | Outcome::LockHeld { .. }
    ) {
        protect_state(
            ctx,
            &Backend::for_service(&svc.namespace().unwrap_or_default(), &svc.name_any()),
            true,
        )
        .await?;
    }
    let fail = |run: &mut RunStatus, result_kind: &str, message: String| {
        run.result = result_kind.to_string();
        run.message = Some(message);
        run.failures = Some(previous_failures + 1);
    };
    match &result.outcome {
        Outcome::Applied { plan, outputs } => {
            let declared = template.map(|t| t.spec.outputs.clone()).unwrap_or_default();
            let missing: Vec<&str> = declared
                .iter()
                .filter(|o| !outputs.contains_key(&o.name))
                .map(|o| o.name.as_str())
                .collect();
            if !missing.is_empty() {
                let message = format!(
                    "outputs: ResourceTemplate {} declares output(s) {} but the module defines no such output",
                    template.map(|t| t.name_any()).unwrap_or_default(),
                    missing.join(", ")
                );
                status::event(ctx, svc, true, "OutputMissing", &message).await;
                fail(&mut run, "Failed", message);
            } else {
                publish_outputs(ctx, svc, st, &declared, outputs).await?;
                protect_state(
                    ctx,
                    &Backend::for_service(&svc.namespace().unwrap_or_default(), &svc.name_any()),
                    true,
                )
                .await?;
                st.tf.applied_hash = Some(result.workspace_hash.clone());
                st.tf.last_applied_time = Some(now.clone());
                st.tf.last_drift_check_time = Some(now.clone());
                if plan.add + plan.change + plan.destroy > 0 {
                    let mut plan = plan.clone();
                    if let JobKind::ApplyApproved(_) = result.kind {
                        if let Some(pending) = &st.tf.plan {
                            plan.trigger = pending.trigger.clone();
                        }
                        plan.approved_by = Some(
                            svc.annotations()
                                .get(APPROVED_BY_ANNOTATION)
                                .cloned()
                                .unwrap_or_else(|| {
                                    "unknown (no mahler.dev/approved-by annotation)".into()
                                }),
                        );
                    }
                    status::event(
                        ctx,
                        svc,
                        false,
                        "Applied",
                        &format!(
                            "plan {} applied: {} added, {} changed, {} destroyed ({} ms)",
                            plan.id,
                            plan.add,
                            plan.change,
                            plan.destroy,
                            result.duration.as_millis()
                        ),
                    )
                    .await;
                    st.tf.plan = Some(plan);
                } else if st.tf.plan.as_ref().is_none_or(|p| p.phase == "Pending") {
                    st.tf.plan = Some(plan.clone());
                }
                st.drifted = None;
                st.tf.lock = Some(LockStatus {
                    state: "Free".into(),
                    message: None,
                });
            }
        }
        Outcome::Planned { plan } => {
            if plan.trigger == "Drift" {
                st.tf.last_drift_check_time = Some(now.clone());
            }
            let fresh = st.tf.plan.as_ref().is_none_or(|p| p.id != plan.id);
            if fresh {
                let note = format!(
                    "plan {} ({}): {} to add, {} to change, {} to destroy",
                    plan.id, plan.trigger, plan.add, plan.change, plan.destroy
                );
                status::event(ctx, svc, false, "PlanReady", &note).await;
            }
            if let JobKind::ApplyApproved(approved) = &result.kind
                && approved != &plan.id
            {
                status::event(
                    ctx,
                    svc,
                    true,
                    "PlanChanged",
                    &format!("approved plan {approved} is no longer what OpenTofu would do; new plan {} needs its own approval", plan.id),
                )
                .await;
            }
            st.tf.plan = Some(plan.clone());
            st.tf.lock = Some(LockStatus {
                state: "Free".into(),
                message: None,
            });
        }
        Outcome::InSync { outputs } => {
            st.tf.last_drift_check_time = Some(now.clone());
            st.drifted = None;
            if let Some(p) = st.tf.plan.as_mut()
                && p.phase == "Pending"
                && p.trigger == "Drift"
            {
                p.phase = "Superseded".into();
            }
            let declared = template.map(|t| t.spec.outputs.clone()).unwrap_or_default();
            publish_outputs(ctx, svc, st, &declared, outputs).await?;
            st.tf.lock = Some(LockStatus {
                state: "Free".into(),
                message: None,
            });
        }
        Outcome::Destroyed => {
            status::event(
                ctx,
                svc,
                false,
                "Destroyed",
                "tofu destroy removed every resource of this Service",
            )
            .await;
            st.tf.applied_hash = None;
            st.tf.plan = None;
        }
        Outcome::LockHeld { message } => {
            run.result = "Blocked".into();
            run.message = Some(message.clone());
            st.tf.lock = Some(LockStatus {
                state: "Blocked".into(),
                message: Some(message.clone()),
            });
        }
        Outcome::Failed {
            reason,
            result: kind,
            message,
        } => {
            let prefix = match *reason {
                "InitFailed" => "init",
                "PlanFailed" => "plan",
                "ApplyFailed" => "apply",
                "DestroyFailed" => "destroy",
                "OutputFailed" => "outputs",
                _ => "run",
            };
            let message = format!("{prefix}: {message}");
            status::event(ctx, svc, true, reason, &message).await;
            fail(&mut run, kind, message);
        }
    }
    st.tf.last_run = Some(run);
    Ok(())
}

/// Writes the declared outputs to `<service>-outputs` (only when they
/// changed) and the non-sensitive ones to status.
async fn publish_outputs(
    ctx: &Context,
    svc: &Service,
    st: &mut Pass,
    declared: &[crate::crd::TemplateOutput],
    outputs: &BTreeMap<String, OutputValue>,
) -> Result<(), Error> {
    let mut h = Sha256::new();
    let mut data = BTreeMap::new();
    let mut visible = BTreeMap::new();
    for o in declared {
        let Some(v) = outputs.get(&o.name) else {
            continue;
        };
        h.update(o.name.as_bytes());
        h.update([0]);
        h.update(v.value.as_bytes());
        h.update([0]);
        data.insert(o.name.clone(), ByteString(v.value.clone().into_bytes()));
        if !(v.sensitive || o.sensitive == Some(true)) {
            visible.insert(o.name.clone(), v.value.clone());
        }
    }
    let hash = workspace::hex(&h.finalize())[..16].to_string();
    let name = format!("{}-outputs", svc.name_any());
    // Nothing new can be created in a namespace being deleted (and a
    // Service being deleted has no readers to serve).
    let leaving = svc.meta().deletion_timestamp.is_some()
        || ctx
            .caches
            .namespace_terminating(&svc.namespace().unwrap_or_default());
    if !leaving
        && (st.status.outputs_hash.as_deref() != Some(hash.as_str())
            || st.status.outputs_secret.is_none())
    {
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: svc.namespace(),
                labels: Some(BTreeMap::from([
                    (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
                    (crate::workload::SERVICE_LABEL.to_string(), svc.name_any()),
                ])),
                owner_references: svc.controller_owner_ref(&()).map(|r| vec![r]),
                ..Default::default()
            },
            data: Some(data),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        apply::apply(ctx, secret, apply::Observed::Absent).await?;
    }
    st.status.outputs = visible;
    st.status.outputs_secret = Some(name);
    st.status.outputs_hash = Some(hash);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn delete(
    ctx: &Context,
    svc: &Service,
    mut st: Pass,
    src: &TemplateSource,
    engine: Option<&Arc<Engine>>,
    key: &str,
    backend: Backend,
    running: Option<(JobKind, Timestamp)>,
) -> Result<Action, Error> {
    if !finalizer::has(svc) {
        return Ok(Action::await_change());
    }
    let ns = svc.namespace().unwrap_or_default();
    let environment = ctx
        .caches
        .environments
        .get(&kube::runtime::reflector::ObjectRef::new(&ns))
        .and_then(|g| g.0.clone().ok());
    // An Environment that cannot be read might say Retain: never destroy on a guess.
    let policy = match (&src.deletion_policy, &environment) {
        (Some(p), _) => *p,
        (None, Some(env)) => env.spec.deletion_policy.unwrap_or(DeletionPolicy::Delete),
        (None, None) => DeletionPolicy::Retain,
    };
    let forced = svc
        .annotations()
        .get(FORCE_DELETE_ANNOTATION)
        .is_some_and(|v| v == "true");
    if let Some((kind, started)) = running {
        let health = Health::progressing(
            running_reason(&kind),
            format!(
                "deleting: waiting for tofu {} (since {started}) to finish",
                kind.operation().to_lowercase()
            ),
        );
        return finish(ctx, svc, st, health, Some(ctx.resync())).await;
    }
    // Whether there is anything to destroy is the state's to say, not status's
    // (status can lag a run that the operator did not live to record).
    let secrets: kube::Api<Secret> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let nothing_applied = secrets
        .get_metadata_opt(&backend.state_secret())
        .await
        .map_err(Error::Kube)?
        .is_none();
    let destroyed = st
        .tf
        .last_run
        .as_ref()
        .is_some_and(|r| r.operation == "Destroy" && r.result == "Succeeded");
    if policy == DeletionPolicy::Retain || forced || destroyed || nothing_applied {
        let note = if policy == DeletionPolicy::Retain {
            format!(
                "deletionPolicy Retain: the infrastructure and its state (Secret {}) are kept",
                backend.state_secret()
            )
        } else if forced {
            format!(
                "{FORCE_DELETE_ANNOTATION}=true: removed without destroying; the infrastructure and its state (Secret {}) are kept",
                backend.state_secret()
            )
        } else {
            "infrastructure destroyed".to_string()
        };
        // The state is no longer guarded: it is empty (destroyed) or the
        // user chose to keep the resources. A state kept inside a namespace
        // that is being deleted goes with it; say so.
        protect_state(ctx, &backend, false).await?;
        if policy == DeletionPolicy::Delete && !forced {
            drop_state(ctx, &backend).await?;
        } else if ctx.caches.namespace_terminating(&ns) {
            status::event(ctx, svc, true, "StateRemoved", &format!("the namespace is being deleted, so the state Secret {} goes with it; the retained infrastructure is no longer tracked", backend.state_secret())).await;
        }
        status::event(ctx, svc, false, "Deleted", &note).await;
        finalizer::remove(ctx, svc).await?;
        return Ok(Action::await_change());
    }
    let way_out = format!(
        "To keep the infrastructure and finish deleting: kubectl annotate msvc {} -n {ns} {FORCE_DELETE_ANNOTATION}=true",
        svc.name_any()
    );
    let Some(engine) = engine else {
        let why = ctx.engine_error.clone().unwrap_or_default();
        let health = Health::stalled(
            "EngineUnavailable",
            format!("cannot destroy: {why}. {way_out}"),
        );
        return finish(ctx, svc, st, health, None).await;
    };
    if let Some(run) = st.tf.last_run.clone()
        && run.operation == "Destroy"
        && run.result != "Succeeded"
        && let Some(wait) =
            backoff_remaining(&st.tf, run.workspace_hash.as_deref().unwrap_or_default())
    {
        let health = Health::stalled(
            "DestroyFailed",
            format!(
                "{}; retrying at {}. {way_out}",
                run.message.unwrap_or_default(),
                retry_at(wait),
            ),
        );
        return finish(ctx, svc, st, health, Some(Action::requeue(wait))).await;
    }
    if let Some((wait, message)) = lock_wait(&st.tf) {
        let health = Health::progressing("LockHeld", format!("deleting: {message}"));
        return finish(ctx, svc, st, health, Some(Action::requeue(wait))).await;
    }
    let ws = match render(ctx, svc, src, engine, backend) {
        Ok(ws) => ws,
        Err((reason, message)) => {
            let health = Health::stalled(
                reason,
                format!(
                    "cannot destroy: {message}. Fix it, or keep the infrastructure: kubectl annotate msvc {} -n {ns} {FORCE_DELETE_ANNOTATION}=true",
                    svc.name_any()
                ),
            );
            return finish(ctx, svc, st, health, None).await;
        }
    };
    let lock = !ctx.caches.namespace_terminating(&ns);
    engine.start(
        key.to_string(),
        ws,
        JobKind::Destroy { lock },
        retrigger(ctx, svc),
    );
    st.drifted = None;
    let health = Health::progressing("Destroying", "tofu destroy running");
    finish(ctx, svc, st, health, Some(ctx.resync())).await
}

/// `kubectl annotate msvc NAME mahler.dev/force-delete=true` removes a
/// template Service without destroying its infrastructure.
pub const FORCE_DELETE_ANNOTATION: &str = "mahler.dev/force-delete";

/// Finalizer on the state Secret: deleting the namespace (or the Secret by
/// hand) cannot drop the state before `tofu destroy` has used it.
pub const STATE_FINALIZER: &str = "mahler.dev/terraform-state";

/// Adds or removes [`STATE_FINALIZER`] on the state Secret.
async fn protect_state(ctx: &Context, backend: &Backend, protect: bool) -> Result<(), Error> {
    let secrets: kube::Api<Secret> = kube::Api::namespaced(ctx.client.clone(), &backend.namespace);
    let Some(secret) = secrets
        .get_metadata_opt(&backend.state_secret())
        .await
        .map_err(Error::Kube)?
    else {
        return Ok(());
    };
    let finalizers = secret.metadata.finalizers.clone().unwrap_or_default();
    let has = finalizers.iter().any(|f| f == STATE_FINALIZER);
    if has == protect {
        return Ok(());
    }
    let finalizers: Vec<String> = if protect {
        finalizers
            .into_iter()
            .chain([STATE_FINALIZER.to_string()])
            .collect()
    } else {
        finalizers
            .into_iter()
            .filter(|f| f != STATE_FINALIZER)
            .collect()
    };
    let patch = serde_json::json!({"metadata": {"finalizers": finalizers, "resourceVersion": secret.metadata.resource_version}});
    secrets
        .patch(
            &backend.state_secret(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.wrote("Secret", "finalizer");
    Ok(())
}

/// Deletes the (empty) state Secret and the lock Lease after a destroy.
async fn drop_state(ctx: &Context, backend: &Backend) -> Result<(), Error> {
    use k8s_openapi::api::coordination::v1::Lease;
    let secrets: kube::Api<Secret> = kube::Api::namespaced(ctx.client.clone(), &backend.namespace);
    let leases: kube::Api<Lease> = kube::Api::namespaced(ctx.client.clone(), &backend.namespace);
    let dp = kube::api::DeleteParams::default();
    for r in [
        secrets
            .delete(&backend.state_secret(), &dp)
            .await
            .map(|_| ()),
        leases.delete(&backend.lock_lease(), &dp).await.map(|_| ()),
    ] {
        match r {
            Ok(()) => ctx.metrics.wrote("Secret", "delete"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    Ok(())
}

async fn finish(
    ctx: &Context,
    svc: &Service,
    mut st: Pass,
    health: Health,
    requeue: Option<Action>,
) -> Result<Action, Error> {
    let current = ctx.written.current(svc, svc.status.as_ref());
    let current = current.as_deref();
    let existing = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let mut conditions = status::conditions(ctx, svc, existing, &health).await;
    let mut set = ConditionSet(std::mem::take(&mut conditions));
    let was_drifted = set.get(DRIFTED).is_some_and(|c| c.status == "True");
    match &st.drifted {
        Some(message) => set.set(
            DRIFTED,
            true,
            "DriftDetected",
            message,
            svc.meta().generation,
        ),
        None if set.get(DRIFTED).is_some() => {
            set.set(DRIFTED, false, "InSync", "", svc.meta().generation)
        }
        None => {}
    }
    if was_drifted && st.drifted.is_none() {
        status::event(
            ctx,
            svc,
            false,
            "DriftResolved",
            "the infrastructure matches the state again",
        )
        .await;
    }
    st.status.conditions = set.into_vec();
    st.status.terraform = Some(Box::new(st.tf));
    status::patch_status(ctx, svc, current, &st.status).await?;
    Ok(requeue.unwrap_or_else(|| ctx.resync()))
}
