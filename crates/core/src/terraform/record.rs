//! Folding a finished job into a template Service's status: the run, the
//! plan, the lock, drift, the outputs. Pure: the writes it needs (guard the
//! state Secret, publish Events, write the outputs Secret) come back as
//! [`Effect`]s for the controller to carry out, in order, before it writes
//! the status.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use mahler_api::terraform::{FailureReason, LockState, PlanPhase, PlanTrigger, RunResult};
use mahler_api::{LockStatus, PlanStatus, RunStatus, TemplateOutput, TerraformStatus};
use sha2::{Digest, Sha256};

use super::job::{JobKind, JobResult, Outcome, OutputValue, Plan};
use super::workspace;

/// The parts of a Service's status a run changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Folded {
    pub terraform: TerraformStatus,
    /// Non-sensitive outputs (`status.outputs`).
    pub outputs: BTreeMap<String, String>,
    pub outputs_secret: Option<String>,
    pub outputs_hash: Option<String>,
    /// `Some(message)`: the Drifted condition is True.
    pub drifted: Option<String>,
}

/// A write the controller makes for a recorded run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Put the finalizer on the state Secret: a run may have written state.
    ProtectState,
    Event {
        warning: bool,
        reason: &'static str,
        note: String,
    },
    /// Write the outputs Secret `name` with these values.
    WriteOutputs {
        name: String,
        data: BTreeMap<String, String>,
    },
}

/// What the fold needs besides the result.
#[derive(Clone, Debug)]
pub struct Context<'a> {
    pub service: &'a str,
    /// The template's name and declared outputs (empty when it is gone).
    pub template: &'a str,
    pub declared: &'a [TemplateOutput],
    /// The `mahler.dev/approved-by` annotation.
    pub approved_by: Option<&'a str>,
    /// The Service or its namespace is being deleted: nothing new is written there.
    pub leaving: bool,
    pub now: Timestamp,
}

/// The plan as status shows it.
pub fn plan_status(plan: &Plan, phase: PlanPhase) -> PlanStatus {
    PlanStatus {
        id: plan.id.clone(),
        workspace_hash: plan.workspace_hash.clone(),
        add: plan.add,
        change: plan.change,
        destroy: plan.destroy,
        trigger: plan.trigger,
        phase,
        resources: plan.resources.clone(),
        approved_by: None,
    }
}

/// Folds `result` into `st`; returns the writes to make, in order.
pub fn record(st: &mut Folded, result: &JobResult, cx: &Context) -> Vec<Effect> {
    let now = cx.now.to_string();
    let mut effects = Vec::new();
    let event = |warning, reason: &'static str, note: String| Effect::Event {
        warning,
        reason,
        note,
    };
    let tf = &mut st.terraform;
    let previous_failures = tf
        .last_run
        .as_ref()
        .filter(|r| {
            r.result != RunResult::Succeeded
                && r.workspace_hash.as_deref() == Some(&result.workspace_hash)
        })
        .and_then(|r| r.failures)
        .unwrap_or(0);
    let mut run = RunStatus {
        operation: result.kind.operation(),
        result: RunResult::Succeeded,
        started_time: result.started.to_string(),
        duration_millis: Some(result.duration.as_millis() as i64),
        message: None,
        workspace_hash: Some(result.workspace_hash.clone()),
        failures: None,
        reason: None,
    };
    for note in &result.notes {
        effects.push(event(
            note.warning,
            note.reason.as_str(),
            note.message.clone(),
        ));
        if note.reason == super::job::NoteReason::LockRecovered {
            tf.lock = Some(LockStatus {
                state: LockState::Recovered,
                message: Some(note.message.clone()),
            });
        }
    }
    // Any run that may have written state (even a failed, partial apply)
    // makes the state precious: guard it before anything else can go wrong.
    if !matches!(
        result.outcome,
        Outcome::Destroyed | Outcome::LockHeld { .. }
    ) {
        effects.insert(0, Effect::ProtectState);
    }
    let free = || {
        Some(LockStatus {
            state: LockState::Free,
            message: None,
        })
    };
    let mut fail = |run: &mut RunStatus, reason, result, message: String| {
        effects.push(event(true, FailureReason::as_str(&reason), message.clone()));
        run.result = result;
        run.reason = Some(reason);
        run.message = Some(message);
        run.failures = Some(previous_failures + 1);
    };
    match &result.outcome {
        Outcome::Applied { plan, outputs } => {
            let missing: Vec<&str> = cx
                .declared
                .iter()
                .filter(|o| !outputs.contains_key(&o.name))
                .map(|o| o.name.as_str())
                .collect();
            if !missing.is_empty() {
                let message = format!(
                    "outputs: ResourceTemplate {} declares output(s) {} but the module defines no such output",
                    cx.template,
                    missing.join(", ")
                );
                fail(
                    &mut run,
                    FailureReason::OutputMissing,
                    RunResult::Failed,
                    message,
                );
            } else {
                let write = publish_outputs(st, cx, outputs);
                effects.extend(write);
                let tf = &mut st.terraform;
                tf.applied_hash = Some(result.workspace_hash.clone());
                tf.last_applied_time = Some(now.clone());
                tf.last_drift_check_time = Some(now.clone());
                if plan.changes() > 0 {
                    let mut applied = plan_status(plan, PlanPhase::Applied);
                    if let JobKind::ApplyApproved(_) = result.kind {
                        if let Some(pending) = &tf.plan {
                            applied.trigger = pending.trigger;
                        }
                        applied.approved_by = Some(cx.approved_by.map_or_else(
                            || "unknown (no mahler.dev/approved-by annotation)".to_string(),
                            str::to_string,
                        ));
                    }
                    effects.push(event(
                        false,
                        "Applied",
                        format!(
                            "plan {} applied: {} added, {} changed, {} destroyed ({} ms)",
                            applied.id,
                            applied.add,
                            applied.change,
                            applied.destroy,
                            result.duration.as_millis()
                        ),
                    ));
                    tf.plan = Some(applied);
                } else if tf
                    .plan
                    .as_ref()
                    .is_none_or(|p| p.phase == PlanPhase::Pending)
                {
                    tf.plan = Some(plan_status(plan, PlanPhase::Applied));
                }
                st.drifted = None;
                st.terraform.lock = free();
            }
        }
        Outcome::Planned { plan } => {
            if plan.trigger == PlanTrigger::Drift {
                tf.last_drift_check_time = Some(now.clone());
            }
            if tf.plan.as_ref().is_none_or(|p| p.id != plan.id) {
                effects.push(event(
                    false,
                    "PlanReady",
                    format!(
                        "plan {} ({}): {} to add, {} to change, {} to destroy",
                        plan.id, plan.trigger, plan.add, plan.change, plan.destroy
                    ),
                ));
            }
            if let JobKind::ApplyApproved(approved) = &result.kind
                && approved != &plan.id
            {
                effects.push(event(
                    true,
                    "PlanChanged",
                    format!("approved plan {approved} is no longer what OpenTofu would do; new plan {} needs its own approval", plan.id),
                ));
            }
            tf.plan = Some(plan_status(plan, PlanPhase::Pending));
            tf.lock = free();
        }
        Outcome::InSync { outputs } => {
            tf.last_drift_check_time = Some(now.clone());
            if let Some(p) = tf.plan.as_mut()
                && p.phase == PlanPhase::Pending
                && p.trigger == PlanTrigger::Drift
            {
                p.phase = PlanPhase::Superseded;
            }
            st.drifted = None;
            let write = publish_outputs(st, cx, outputs);
            effects.extend(write);
            st.terraform.lock = free();
        }
        Outcome::Destroyed => {
            effects.push(event(
                false,
                "Destroyed",
                "tofu destroy removed every resource of this Service".to_string(),
            ));
            tf.applied_hash = None;
            tf.plan = None;
        }
        Outcome::LockHeld { message } => {
            run.result = RunResult::Blocked;
            run.message = Some(message.clone());
            tf.lock = Some(LockStatus {
                state: LockState::Blocked,
                message: Some(message.clone()),
            });
        }
        Outcome::Failed(failure) => {
            fail(
                &mut run,
                failure.reason,
                failure.result,
                failure.to_string(),
            );
        }
    }
    st.terraform.last_run = Some(run);
    effects
}

/// Sets the outputs in status (the non-sensitive ones visible); returns
/// the Secret write when the values changed (not while leaving).
fn publish_outputs(
    st: &mut Folded,
    cx: &Context,
    outputs: &BTreeMap<String, OutputValue>,
) -> Option<Effect> {
    let mut h = Sha256::new();
    let mut data = BTreeMap::new();
    let mut visible = BTreeMap::new();
    for o in cx.declared {
        let Some(v) = outputs.get(&o.name) else {
            continue;
        };
        h.update(o.name.as_bytes());
        h.update([0]);
        h.update(v.value.as_bytes());
        h.update([0]);
        data.insert(o.name.clone(), v.value.clone());
        if !(v.sensitive || o.sensitive == Some(true)) {
            visible.insert(o.name.clone(), v.value.clone());
        }
    }
    let hash = workspace::hex(&h.finalize())[..16].to_string();
    let name = format!("{}-outputs", cx.service);
    let changed = st.outputs_hash.as_deref() != Some(hash.as_str()) || st.outputs_secret.is_none();
    st.outputs = visible;
    st.outputs_secret = Some(name.clone());
    st.outputs_hash = Some(hash);
    (changed && !cx.leaving).then_some(Effect::WriteOutputs { name, data })
}
