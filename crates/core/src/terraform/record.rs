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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terraform::job::{Note, NoteReason, RunFailure};
    use std::time::Duration;

    fn plan(id: &str, add: i32, trigger: PlanTrigger) -> Plan {
        Plan {
            id: id.into(),
            workspace_hash: "h1".into(),
            add,
            trigger,
            ..Default::default()
        }
    }

    fn result(kind: JobKind, outcome: Outcome) -> JobResult {
        JobResult {
            kind,
            workspace_hash: "h1".into(),
            started: "2026-12-01T12:00:00Z".parse().unwrap(),
            duration: Duration::from_millis(1500),
            outcome,
            notes: Vec::new(),
        }
    }

    fn outputs(pairs: &[(&str, &str, bool)]) -> BTreeMap<String, OutputValue> {
        pairs
            .iter()
            .map(|(k, v, sensitive)| {
                (
                    k.to_string(),
                    OutputValue {
                        value: v.to_string(),
                        sensitive: *sensitive,
                    },
                )
            })
            .collect()
    }

    fn declared(names: &[&str]) -> Vec<TemplateOutput> {
        names
            .iter()
            .map(|n| TemplateOutput {
                name: n.to_string(),
                sensitive: None,
                description: None,
            })
            .collect()
    }

    fn cx<'a>(declared: &'a [TemplateOutput], leaving: bool) -> Context<'a> {
        Context {
            service: "db",
            template: "postgres",
            declared,
            approved_by: Some("bob"),
            leaving,
            now: "2026-12-01T12:00:02Z".parse().unwrap(),
        }
    }

    fn reasons(effects: &[Effect]) -> Vec<&str> {
        effects
            .iter()
            .map(|e| match e {
                Effect::ProtectState => "ProtectState",
                Effect::Event { reason, .. } => reason,
                Effect::WriteOutputs { .. } => "WriteOutputs",
            })
            .collect()
    }

    #[test]
    fn an_apply_guards_the_state_first_publishes_outputs_and_clears_drift() {
        let d = declared(&["url", "password"]);
        let mut st = Folded {
            drifted: Some("changed".into()),
            ..Default::default()
        };
        let r = result(
            JobKind::Converge,
            Outcome::Applied {
                plan: plan("p1", 2, PlanTrigger::Create),
                outputs: outputs(&[("url", "pg://x", false), ("password", "s3cret", true)]),
            },
        );
        let effects = record(&mut st, &r, &cx(&d, false));
        assert_eq!(
            reasons(&effects),
            vec!["ProtectState", "WriteOutputs", "Applied"]
        );
        assert_eq!(st.terraform.applied_hash.as_deref(), Some("h1"));
        assert_eq!(
            st.terraform.plan.as_ref().unwrap().phase,
            PlanPhase::Applied
        );
        assert_eq!(
            st.terraform.last_run.as_ref().unwrap().result,
            RunResult::Succeeded
        );
        assert_eq!(st.terraform.lock.as_ref().unwrap().state, LockState::Free);
        assert_eq!(st.drifted, None);
        // Sensitive outputs stay out of status.
        assert_eq!(st.outputs.keys().collect::<Vec<_>>(), vec!["url"]);
        assert_eq!(st.outputs_secret.as_deref(), Some("db-outputs"));
        // The same outputs again: no second Secret write.
        let again = record(&mut st, &r, &cx(&d, false));
        assert!(!reasons(&again).contains(&"WriteOutputs"));
    }

    #[test]
    fn nothing_new_is_written_into_a_namespace_being_deleted() {
        let d = declared(&["url"]);
        let mut st = Folded::default();
        let r = result(
            JobKind::DriftCheck { correct: true },
            Outcome::InSync {
                outputs: outputs(&[("url", "pg://x", false)]),
            },
        );
        let effects = record(&mut st, &r, &cx(&d, true));
        assert_eq!(reasons(&effects), vec!["ProtectState"]);
        assert_eq!(st.outputs_secret.as_deref(), Some("db-outputs"));
    }

    #[test]
    fn a_declared_output_the_module_lacks_fails_the_run_as_output_missing() {
        let d = declared(&["url", "port"]);
        let mut st = Folded::default();
        let r = result(
            JobKind::Converge,
            Outcome::Applied {
                plan: plan("p1", 1, PlanTrigger::Create),
                outputs: outputs(&[("url", "pg://x", false)]),
            },
        );
        let effects = record(&mut st, &r, &cx(&d, false));
        assert_eq!(reasons(&effects), vec!["ProtectState", "OutputMissing"]);
        let run = st.terraform.last_run.unwrap();
        assert_eq!(run.reason, Some(FailureReason::OutputMissing));
        assert_eq!(run.failures, Some(1));
        assert!(
            run.message
                .unwrap()
                .starts_with("outputs: ResourceTemplate postgres declares output(s) port")
        );
        assert_eq!(st.terraform.applied_hash, None);
    }

    #[test]
    fn failures_of_one_workspace_count_up_with_their_step_as_reason() {
        let mut st = Folded::default();
        let fail = result(
            JobKind::Converge,
            Outcome::Failed(RunFailure {
                reason: FailureReason::InitFailed,
                result: RunResult::TimedOut,
                message: "timed out and was interrupted; provider slow".into(),
            }),
        );
        let effects = record(&mut st, &fail, &cx(&[], false));
        assert_eq!(reasons(&effects), vec!["ProtectState", "InitFailed"]);
        record(&mut st, &fail, &cx(&[], false));
        let run = st.terraform.last_run.clone().unwrap();
        assert_eq!(
            (run.result, run.reason, run.failures),
            (
                RunResult::TimedOut,
                Some(FailureReason::InitFailed),
                Some(2)
            )
        );
        assert_eq!(
            run.message.as_deref(),
            Some("init: timed out and was interrupted; provider slow")
        );
    }

    #[test]
    fn a_recovered_lock_and_a_held_one_show_in_the_lock_status() {
        let mut st = Folded::default();
        let mut r = result(
            JobKind::Converge,
            Outcome::LockHeld {
                message: "held by ops@laptop".into(),
            },
        );
        let effects = record(&mut st, &r, &cx(&[], false));
        assert!(effects.is_empty(), "nothing ran: nothing to guard or say");
        assert_eq!(
            st.terraform.lock.as_ref().unwrap().state,
            LockState::Blocked
        );
        assert_eq!(
            st.terraform.last_run.as_ref().unwrap().result,
            RunResult::Blocked
        );

        r.notes.push(Note {
            warning: true,
            reason: NoteReason::LockRecovered,
            message: "released an orphaned state lock: its process is gone".into(),
        });
        r.outcome = Outcome::Destroyed;
        let effects = record(&mut st, &r, &cx(&[], false));
        assert_eq!(reasons(&effects), vec!["LockRecovered", "Destroyed"]);
        assert_eq!(
            st.terraform.lock.as_ref().unwrap().state,
            LockState::Recovered
        );
    }

    #[test]
    fn plans_are_announced_once_and_an_approved_plan_that_changed_is_not_applied() {
        let mut st = Folded::default();
        let planned = result(
            JobKind::PlanOnly,
            Outcome::Planned {
                plan: plan("p1", 1, PlanTrigger::Create),
            },
        );
        assert_eq!(
            reasons(&record(&mut st, &planned, &cx(&[], false))),
            vec!["ProtectState", "PlanReady"]
        );
        assert_eq!(
            reasons(&record(&mut st, &planned, &cx(&[], false))),
            vec!["ProtectState"]
        );
        let changed = result(
            JobKind::ApplyApproved("p1".into()),
            Outcome::Planned {
                plan: plan("p2", 2, PlanTrigger::Update),
            },
        );
        assert_eq!(
            reasons(&record(&mut st, &changed, &cx(&[], false))),
            vec!["ProtectState", "PlanReady", "PlanChanged"]
        );
        assert_eq!(st.terraform.plan.as_ref().unwrap().id, "p2");
        assert_eq!(
            st.terraform.plan.as_ref().unwrap().phase,
            PlanPhase::Pending
        );
        // Applying it records who approved, and keeps the pending plan's trigger.
        let applied = result(
            JobKind::ApplyApproved("p2".into()),
            Outcome::Applied {
                plan: plan("p2", 2, PlanTrigger::Create),
                outputs: BTreeMap::new(),
            },
        );
        record(&mut st, &applied, &cx(&[], false));
        let p = st.terraform.plan.unwrap();
        assert_eq!(
            (p.approved_by.as_deref(), p.trigger),
            (Some("bob"), PlanTrigger::Update)
        );
    }

    #[test]
    fn a_clean_drift_check_supersedes_a_pending_drift_plan() {
        let mut st = Folded {
            drifted: Some("changed".into()),
            ..Default::default()
        };
        let drift = result(
            JobKind::DriftCheck { correct: false },
            Outcome::Planned {
                plan: plan("d1", 1, PlanTrigger::Drift),
            },
        );
        record(&mut st, &drift, &cx(&[], false));
        assert!(st.terraform.last_drift_check_time.is_some());
        let clean = result(
            JobKind::DriftCheck { correct: false },
            Outcome::InSync {
                outputs: BTreeMap::new(),
            },
        );
        record(&mut st, &clean, &cx(&[], false));
        assert_eq!(st.terraform.plan.unwrap().phase, PlanPhase::Superseded);
        assert_eq!(st.drifted, None);
    }
}
