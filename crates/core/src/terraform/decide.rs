//! What a template Service does next: the state machine, as one pure
//! function. The controller observes (the Service, its status, its
//! template's rendered workspace, the engine's job, the state Secret when
//! deleting), calls [`decide`], and acts on the [`Action`] it returns: start
//! a job, report, or finish a deletion. Nothing here reads a clock, a cache
//! or the network, so every branch has a table test below.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp, Unit};
use mahler_api::names::{APPROVE_ANNOTATION, APPROVED_BY_ANNOTATION, FORCE_DELETE_ANNOTATION};
use mahler_api::terraform::{Operation, PlanPhase, RunResult};
use mahler_api::{Approval, DeletionPolicy, DriftPolicy, Health, PlanStatus, TerraformStatus};

use super::job::JobKind;

/// How long a run that found the state lock held waits before the next try.
pub const LOCK_RETRY: Duration = Duration::from_secs(15);

/// Why a Service's workspace cannot be rendered: a condition reason and a
/// message naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }

    /// A git module not fetched yet: the Service waits, it is not stuck.
    fn is_wait(&self) -> bool {
        self.reason == "WaitingForTemplate"
    }
}

/// The engine's job for this Service, as the decision needs it (a finished
/// job has been recorded into the status before deciding).
#[derive(Clone, Debug, PartialEq)]
pub enum Job<'a> {
    Idle,
    Running {
        kind: &'a JobKind,
        started: Timestamp,
    },
}

/// Everything the decision depends on.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The Service carries Mahler's finalizer.
    pub has_finalizer: bool,
    /// Whether the engine can run OpenTofu; why not.
    pub engine: Result<(), &'a str>,
    pub job: Job<'a>,
    /// The hash of the workspace the spec renders to, or what is wrong with it.
    pub workspace: Result<&'a str, &'a Problem>,
    /// `status.terraform`, with any finished job already recorded.
    pub terraform: &'a TerraformStatus,
    /// `status.outputsSecret`.
    pub outputs_secret: Option<&'a str>,
    /// The message of a True `Drifted` condition, kept until a run says otherwise.
    pub drifted: Option<&'a str>,
    pub approval: Approval,
    /// The `mahler.dev/approve-plan` annotation.
    pub approved: Option<&'a str>,
    pub drift_policy: DriftPolicy,
    /// Between drift checks (zero: never).
    pub drift_interval: Duration,
    /// The Service's, else its Environment's; `Retain` when the Environment
    /// cannot be read (never destroy on a guess).
    pub deletion_policy: DeletionPolicy,
    /// `mahler.dev/force-delete=true`.
    pub forced: bool,
    /// Whether the state Secret exists (read only while deleting): the
    /// state, not status, says whether anything is left to destroy.
    pub state_exists: bool,
    pub namespace_terminating: bool,
    /// The state Secret's name.
    pub state_secret: &'a str,
    pub now: Timestamp,
}

/// When to look again, besides on any change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requeue {
    /// Only on a change (the engine re-triggers when its job ends; the
    /// periodic resync is the safety net).
    OnChange,
    After(Duration),
}

/// The status a pass reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub health: Health,
    pub requeue: Requeue,
    /// `Some(message)`: the Drifted condition is True.
    pub drifted: Option<String>,
    /// Add the finalizer before anything else (a live Service the engine
    /// may create infrastructure for).
    pub finalizer: bool,
}

/// The end of a deletion: nothing is left to destroy, or it is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// Delete the (empty) state Secret and the lock Lease.
    pub drop_state: bool,
    /// Warn that the kept state goes with the terminating namespace.
    pub state_goes_with_namespace: bool,
    /// The `Deleted` Event's note.
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing to do or write (the finalizer is already gone).
    Nothing,
    /// Report, start nothing.
    Report(Report),
    /// Start this job, and report.
    Start(JobKind, Report),
    /// Unguard the state, say so, remove the finalizer.
    Release(Release),
}

/// What a template Service does next.
pub fn decide(o: &Observed) -> Action {
    if o.deleting {
        return decide_deletion(o);
    }
    if let Err(why) = o.engine {
        return report(
            o,
            Health::stalled("EngineUnavailable", why),
            Requeue::OnChange,
        );
    }
    if let Job::Running { kind, started } = &o.job {
        // A drift check of applied infrastructure leaves it Ready (and the
        // status unchanged): only what it finds is news.
        if matches!(kind, JobKind::DriftCheck { .. }) && o.terraform.applied_hash.is_some() {
            return report(o, Health::ready(ready_message(o)), Requeue::OnChange);
        }
        let health = Health::progressing(
            running_reason(kind),
            format!(
                "tofu {} running since {started}",
                kind.operation().as_str().to_lowercase()
            ),
        );
        return report(o, health, Requeue::OnChange);
    }
    let hash = match o.workspace {
        Ok(hash) => hash,
        Err(p) if p.is_wait() => {
            return live(
                o,
                Health::progressing(p.reason, &p.message),
                Requeue::OnChange,
            );
        }
        Err(p) => return live(o, Health::stalled(p.reason, &p.message), Requeue::OnChange),
    };
    let tf = o.terraform;
    // A failed run of this same workspace is retried with backoff, not at once.
    if let Some(retry_in) = backoff_remaining(tf, hash, o.now) {
        let run = tf.last_run.clone().unwrap_or_default();
        let health = Health::stalled(
            failure_reason(run.reason),
            format!(
                "{} (retrying at {}, or at once when the spec changes)",
                run.message.unwrap_or_default(),
                retry_at(o.now, retry_in)
            ),
        );
        return live(o, health, Requeue::After(retry_in));
    }
    if let Some((wait, message)) = lock_wait(tf, o.now) {
        return live(
            o,
            Health::progressing("LockHeld", message),
            Requeue::After(wait),
        );
    }
    let pending = tf
        .plan
        .as_ref()
        .filter(|p| p.phase == PlanPhase::Pending && p.workspace_hash == hash);
    // An approved pending plan (manual approval, or drift held for approval).
    if let Some(plan) = pending
        && o.approved == Some(plan.id.as_str())
    {
        let health = Health::progressing("Applying", format!("applying approved plan {}", plan.id));
        return start(o, JobKind::ApplyApproved(plan.id.clone()), health);
    }
    if tf.applied_hash.as_deref() != Some(hash) {
        if o.approval == Approval::Manual {
            if let Some(plan) = pending {
                let health = Health::progressing("AwaitingApproval", awaiting(o, plan));
                return live(o, health, Requeue::OnChange);
            }
            let health = Health::progressing(
                "Planning",
                "tofu plan running (manual approval: the plan will wait for an owner)",
            );
            return start(o, JobKind::PlanOnly, health);
        }
        let health = Health::progressing("Applying", "tofu plan and apply running");
        return start(o, JobKind::Converge, health);
    }

    // Applied. Is a drift check due?
    let since_check = tf
        .last_drift_check_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .and_then(|t| seconds_since(o.now, t))
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    let interval = o.drift_interval;
    if !interval.is_zero() && since_check.is_none_or(|s| s >= interval) {
        let correct = o.drift_policy == DriftPolicy::Correct && o.approval == Approval::Auto;
        return start(
            o,
            JobKind::DriftCheck { correct },
            Health::ready(ready_message(o)),
        );
    }
    let mut drifted = o.drifted.map(str::to_string);
    if let Some(plan) = pending {
        // Drift found and held for approval / by policy.
        drifted = Some(if o.drift_policy == DriftPolicy::Hold {
            format!(
                "drift held by driftPolicy Hold: plan {} would change {} resource(s)",
                plan.id,
                plan.add + plan.change + plan.destroy
            )
        } else {
            awaiting(o, plan)
        });
    }
    let requeue = if interval.is_zero() {
        Requeue::OnChange
    } else {
        let next_check = interval.saturating_sub(since_check.unwrap_or_default());
        // The periodic resync reaches it anyway; the controller caps this by it.
        Requeue::After(next_check.max(Duration::from_secs(1)))
    };
    Action::Report(Report {
        health: Health::ready(ready_message(o)),
        requeue,
        drifted,
        finalizer: true,
    })
}

fn decide_deletion(o: &Observed) -> Action {
    if !o.has_finalizer {
        return Action::Nothing;
    }
    if let Job::Running { kind, started } = &o.job {
        let health = Health::progressing(
            running_reason(kind),
            format!(
                "deleting: waiting for tofu {} (since {started}) to finish",
                kind.operation().as_str().to_lowercase()
            ),
        );
        return report(o, health, Requeue::OnChange);
    }
    let tf = o.terraform;
    let destroyed = tf
        .last_run
        .as_ref()
        .is_some_and(|r| r.operation == Operation::Destroy && r.result == RunResult::Succeeded);
    let retain = o.deletion_policy == DeletionPolicy::Retain;
    if retain || o.forced || destroyed || !o.state_exists {
        let state = o.state_secret;
        let note = if retain {
            format!(
                "deletionPolicy Retain: the infrastructure and its state (Secret {state}) are kept"
            )
        } else if o.forced {
            format!(
                "{FORCE_DELETE_ANNOTATION}=true: removed without destroying; the infrastructure and its state (Secret {state}) are kept"
            )
        } else {
            "infrastructure destroyed".to_string()
        };
        let drop_state = !retain && !o.forced;
        return Action::Release(Release {
            drop_state,
            state_goes_with_namespace: !drop_state && o.namespace_terminating,
            note,
        });
    }
    let way_out = format!(
        "To keep the infrastructure and finish deleting: kubectl annotate msvc {} -n {} {FORCE_DELETE_ANNOTATION}=true",
        o.name, o.namespace
    );
    if let Err(why) = o.engine {
        let health = Health::stalled(
            "EngineUnavailable",
            format!("cannot destroy: {why}. {way_out}"),
        );
        return report(o, health, Requeue::OnChange);
    }
    if let Some(run) = &tf.last_run
        && run.operation == Operation::Destroy
        && run.result != RunResult::Succeeded
        && let Some(wait) =
            backoff_remaining(tf, run.workspace_hash.as_deref().unwrap_or_default(), o.now)
    {
        let health = Health::stalled(
            "DestroyFailed",
            format!(
                "{}; retrying at {}. {way_out}",
                run.message.clone().unwrap_or_default(),
                retry_at(o.now, wait),
            ),
        );
        return report(o, health, Requeue::After(wait));
    }
    if let Some((wait, message)) = lock_wait(tf, o.now) {
        let health = Health::progressing("LockHeld", format!("deleting: {message}"));
        return report(o, health, Requeue::After(wait));
    }
    if let Err(p) = o.workspace {
        let health = Health::stalled(
            p.reason,
            format!(
                "cannot destroy: {}. Fix it, or keep the infrastructure: kubectl annotate msvc {} -n {} {FORCE_DELETE_ANNOTATION}=true",
                p.message, o.name, o.namespace
            ),
        );
        return report(o, health, Requeue::OnChange);
    }
    let kind = JobKind::Destroy {
        lock: !o.namespace_terminating,
    };
    Action::Start(
        kind,
        Report {
            health: Health::progressing("Destroying", "tofu destroy running"),
            requeue: Requeue::OnChange,
            drifted: None,
            finalizer: false,
        },
    )
}

/// A report that keeps the Drifted condition as it is.
fn report(o: &Observed, health: Health, requeue: Requeue) -> Action {
    Action::Report(Report {
        health,
        requeue,
        drifted: o.drifted.map(str::to_string),
        finalizer: false,
    })
}

/// A report for a live Service past the running-job check: it carries the
/// finalizer from here on.
fn live(o: &Observed, health: Health, requeue: Requeue) -> Action {
    Action::Report(Report {
        health,
        requeue,
        drifted: o.drifted.map(str::to_string),
        finalizer: true,
    })
}

fn start(o: &Observed, kind: JobKind, health: Health) -> Action {
    Action::Start(
        kind,
        Report {
            health,
            requeue: Requeue::OnChange,
            drifted: o.drifted.map(str::to_string),
            finalizer: true,
        },
    )
}

fn running_reason(kind: &JobKind) -> &'static str {
    match kind {
        JobKind::Converge | JobKind::ApplyApproved(_) => "Applying",
        JobKind::PlanOnly => "Planning",
        JobKind::DriftCheck { .. } => "CheckingDrift",
        JobKind::Destroy { .. } => "Destroying",
    }
}

/// The condition reason of a failed run: the step that failed.
fn failure_reason(reason: Option<mahler_api::terraform::FailureReason>) -> &'static str {
    reason.map_or("RunFailed", |r| r.as_str())
}

/// How to approve a pending plan, and what it would do.
pub fn awaiting(o: &Observed, plan: &PlanStatus) -> String {
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
        o.name,
        o.namespace,
        plan.id
    )
}

fn ready_message(o: &Observed) -> String {
    let plan = o
        .terraform
        .plan
        .as_ref()
        .map(|p| format!(" (plan {})", p.id))
        .unwrap_or_default();
    let secret = o
        .outputs_secret
        .map(|s| format!("; outputs in Secret {s}"))
        .unwrap_or_default();
    format!("applied{plan}{secret}")
}

/// While the last run found the state lock held (someone may still be
/// working), wait [`LOCK_RETRY`] from that run before trying again,
/// whatever the job. Returns the wait and what holds the lock.
fn lock_wait(tf: &TerraformStatus, now: Timestamp) -> Option<(Duration, String)> {
    let run = tf.last_run.as_ref()?;
    if run.result != RunResult::Blocked || !finished_within(tf, LOCK_RETRY, now) {
        return None;
    }
    let message = tf.lock.as_ref().and_then(|l| l.message.clone());
    Some((LOCK_RETRY, message.unwrap_or_default()))
}

/// A retry time that stays the same across passes (so status does not
/// change, and is not rewritten, while waiting): whole seconds.
fn retry_at(now: Timestamp, wait: Duration) -> String {
    let at = now
        .checked_add(SignedDuration::from_secs(wait.as_secs() as i64))
        .unwrap_or(now);
    at.round(Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| at.to_string())
}

fn seconds_since(now: Timestamp, then: Timestamp) -> Option<f64> {
    now.since(then).ok()?.total(Unit::Second).ok()
}

fn finished_within(tf: &TerraformStatus, within: Duration, now: Timestamp) -> bool {
    let finished = tf.last_run.as_ref().and_then(|r| {
        let started = r.started_time.parse::<Timestamp>().ok()?;
        let ms = r.duration_millis.unwrap_or_default();
        started.checked_add(SignedDuration::from_millis(ms)).ok()
    });
    finished
        .and_then(|f| seconds_since(now, f))
        .is_some_and(|s| s < within.as_secs_f64())
}

/// Time left before a failed workspace may be retried: 30 s doubling per
/// consecutive failure, at most 30 min.
pub fn backoff_remaining(tf: &TerraformStatus, hash: &str, now: Timestamp) -> Option<Duration> {
    let run = tf.last_run.as_ref()?;
    if matches!(run.result, RunResult::Succeeded | RunResult::Blocked)
        || run.workspace_hash.as_deref() != Some(hash)
    {
        return None;
    }
    let failures = run.failures.unwrap_or(1).clamp(1, 7);
    let wait =
        Duration::from_secs(30 * 2u64.pow(failures as u32 - 1)).min(Duration::from_secs(1800));
    let started = run.started_time.parse::<Timestamp>().ok()?;
    let elapsed = seconds_since(now, started)?;
    let elapsed = Duration::from_secs_f64(elapsed.max(0.0)).saturating_sub(Duration::from_millis(
        run.duration_millis.unwrap_or_default().max(0) as u64,
    ));
    (elapsed < wait).then(|| wait - elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::terraform::{FailureReason, LockState, PlanTrigger};
    use mahler_api::{LockStatus, PlannedResource, RunStatus};

    const HASH: &str = "h1";

    /// One observation, owned; [`Case::observed`] borrows it.
    struct Case {
        deleting: bool,
        has_finalizer: bool,
        engine: Result<(), &'static str>,
        running: Option<JobKind>,
        workspace: Result<&'static str, Problem>,
        tf: TerraformStatus,
        drifted: Option<&'static str>,
        approval: Approval,
        approved: Option<&'static str>,
        drift_policy: DriftPolicy,
        drift_interval: Duration,
        deletion_policy: DeletionPolicy,
        forced: bool,
        state_exists: bool,
        terminating: bool,
        now: Timestamp,
    }

    fn now() -> Timestamp {
        "2026-12-01T12:00:00Z".parse().unwrap()
    }

    /// `secs` seconds before [`now`].
    fn ago(secs: i64) -> String {
        now()
            .checked_sub(SignedDuration::from_secs(secs))
            .unwrap()
            .to_string()
    }

    impl Case {
        fn new() -> Self {
            Case {
                deleting: false,
                has_finalizer: true,
                engine: Ok(()),
                running: None,
                workspace: Ok(HASH),
                tf: TerraformStatus::default(),
                drifted: None,
                approval: Approval::Auto,
                approved: None,
                drift_policy: DriftPolicy::Correct,
                drift_interval: Duration::from_secs(3600),
                deletion_policy: DeletionPolicy::Delete,
                forced: false,
                state_exists: true,
                terminating: false,
                now: now(),
            }
        }

        /// Applied `HASH`, drift checked `checked` seconds ago.
        fn applied(mut self, checked: i64) -> Self {
            self.tf.applied_hash = Some(HASH.into());
            self.tf.last_drift_check_time = Some(ago(checked));
            self
        }

        fn pending(mut self, id: &str, trigger: PlanTrigger) -> Self {
            self.tf.plan = Some(PlanStatus {
                id: id.into(),
                workspace_hash: HASH.into(),
                add: 1,
                trigger,
                phase: PlanPhase::Pending,
                resources: vec![PlannedResource {
                    address: "null_resource.x".into(),
                    action: "create".into(),
                }],
                ..Default::default()
            });
            self
        }

        /// The last run: `op` ended `result` `secs` seconds ago (1 s long).
        fn last_run(mut self, op: Operation, result: RunResult, hash: &str, secs: i64) -> Self {
            self.tf.last_run = Some(RunStatus {
                operation: op,
                result,
                started_time: ago(secs + 1),
                duration_millis: Some(1000),
                message: Some("apply: boom".into()),
                workspace_hash: Some(hash.into()),
                failures: Some(1),
                reason: (result == RunResult::Failed).then_some(FailureReason::ApplyFailed),
            });
            self
        }

        fn blocked(mut self, secs: i64) -> Self {
            self = self.last_run(Operation::Apply, RunResult::Blocked, HASH, secs);
            self.tf.lock = Some(LockStatus {
                state: LockState::Blocked,
                message: Some("held by someone@elsewhere".into()),
            });
            self
        }

        fn deleting(mut self) -> Self {
            self.deleting = true;
            self
        }

        fn decide(&self) -> Action {
            decide(&Observed {
                name: "db",
                namespace: "shop-staging",
                deleting: self.deleting,
                has_finalizer: self.has_finalizer,
                engine: self.engine,
                job: match &self.running {
                    Some(kind) => Job::Running {
                        kind,
                        started: self.now,
                    },
                    None => Job::Idle,
                },
                workspace: self.workspace.as_ref().map(|h| *h),
                terraform: &self.tf,
                outputs_secret: Some("db-outputs"),
                drifted: self.drifted,
                approval: self.approval,
                approved: self.approved,
                drift_policy: self.drift_policy,
                drift_interval: self.drift_interval,
                deletion_policy: self.deletion_policy,
                forced: self.forced,
                state_exists: self.state_exists,
                namespace_terminating: self.terminating,
                state_secret: "tfstate-default-mahler-db",
                now: self.now,
            })
        }
    }

    /// A table row's expectation: the reason, the job started, the requeue.
    type Expected = (&'static str, Option<JobKind>, Option<Requeue>);

    /// The reason, the job started, the requeue.
    fn summary(action: &Action) -> (String, Option<JobKind>, Option<Requeue>) {
        match action {
            Action::Nothing => ("Nothing".into(), None, None),
            Action::Release(r) => (format!("Release(drop_state={})", r.drop_state), None, None),
            Action::Report(r) => (r.health.reason().into(), None, Some(r.requeue)),
            Action::Start(kind, r) => (
                r.health.reason().into(),
                Some(kind.clone()),
                Some(r.requeue),
            ),
        }
    }

    fn report(action: &Action) -> &Report {
        match action {
            Action::Report(r) | Action::Start(_, r) => r,
            other => panic!("expected a report, got {other:?}"),
        }
    }

    fn problem(reason: &'static str, message: &str) -> Result<&'static str, Problem> {
        Err(Problem::new(reason, message))
    }

    #[test]
    fn every_branch_of_a_live_service() {
        use JobKind::*;
        let on_change = Some(Requeue::OnChange);
        let manual = |mut c: Case| {
            c.approval = Approval::Manual;
            c
        };
        let hold = |mut c: Case| {
            c.drift_policy = DriftPolicy::Hold;
            c
        };
        let approved = |mut c: Case, id| {
            c.approved = Some(id);
            c
        };
        let no_engine = |mut c: Case| {
            c.engine = Err("MAHLER_TOFU is not set");
            c
        };
        let running = |mut c: Case, kind| {
            c.running = Some(kind);
            c
        };
        let workspace = |mut c: Case, ws| {
            c.workspace = ws;
            c
        };
        let interval = |mut c: Case, secs| {
            c.drift_interval = Duration::from_secs(secs);
            c
        };
        let table: Vec<(&str, Case, Expected)> = vec![
            (
                "waiting for the engine",
                no_engine(Case::new()),
                ("EngineUnavailable", None, on_change),
            ),
            (
                "an apply running",
                running(Case::new(), Converge),
                ("Applying", None, on_change),
            ),
            (
                "a plan running",
                running(Case::new(), PlanOnly),
                ("Planning", None, on_change),
            ),
            (
                "a drift check of applied infrastructure stays Ready",
                running(Case::new().applied(10), DriftCheck { correct: true }),
                ("Ready", None, on_change),
            ),
            (
                "missing template",
                workspace(
                    Case::new(),
                    problem(
                        "TemplateNotFound",
                        "spec.source.template.name: no ResourceTemplate named pg",
                    ),
                ),
                ("TemplateNotFound", None, on_change),
            ),
            (
                "bad inputs",
                workspace(
                    Case::new(),
                    problem(
                        "InvalidInputs",
                        "spec.source.template.inputs.size: -1 is less than 1",
                    ),
                ),
                ("InvalidInputs", None, on_change),
            ),
            (
                "a git module not fetched yet",
                workspace(
                    Case::new(),
                    problem("WaitingForTemplate", "commit abc is not checked out yet"),
                ),
                ("WaitingForTemplate", None, on_change),
            ),
            (
                "new, auto approval: plan and apply",
                Case::new(),
                ("Applying", Some(Converge), on_change),
            ),
            (
                "new, manual approval: plan only",
                manual(Case::new()),
                ("Planning", Some(PlanOnly), on_change),
            ),
            (
                "manual, plan pending",
                manual(Case::new().pending("p1", PlanTrigger::Create)),
                ("AwaitingApproval", None, on_change),
            ),
            (
                "manual, another plan approved",
                approved(manual(Case::new().pending("p1", PlanTrigger::Create)), "p0"),
                ("AwaitingApproval", None, on_change),
            ),
            (
                "manual, pending plan approved",
                approved(manual(Case::new().pending("p1", PlanTrigger::Create)), "p1"),
                ("Applying", Some(ApplyApproved("p1".into())), on_change),
            ),
            (
                "failed 10 s ago: back off",
                Case::new().last_run(Operation::Apply, RunResult::Failed, HASH, 10),
                (
                    "ApplyFailed",
                    None,
                    Some(Requeue::After(Duration::from_secs(20))),
                ),
            ),
            (
                "failed, then the spec changed: retry at once",
                Case::new().last_run(Operation::Apply, RunResult::Failed, "h0", 10),
                ("Applying", Some(Converge), on_change),
            ),
            (
                "failed 40 s ago: retry",
                Case::new().last_run(Operation::Apply, RunResult::Failed, HASH, 40),
                ("Applying", Some(Converge), on_change),
            ),
            (
                "lock Blocked 5 s ago: wait",
                Case::new().blocked(5),
                ("LockHeld", None, Some(Requeue::After(LOCK_RETRY))),
            ),
            (
                "lock Blocked 20 s ago: try again",
                Case::new().blocked(20),
                ("Applying", Some(Converge), on_change),
            ),
            (
                "applied, drift check due, Correct",
                Case::new().applied(3601),
                ("Ready", Some(DriftCheck { correct: true }), on_change),
            ),
            (
                "applied, drift check due, Hold",
                hold(Case::new().applied(3601)),
                ("Ready", Some(DriftCheck { correct: false }), on_change),
            ),
            (
                "applied, drift check due, manual approval never corrects",
                manual(Case::new().applied(3601)),
                ("Ready", Some(DriftCheck { correct: false }), on_change),
            ),
            (
                "applied, next check in 10 min",
                Case::new().applied(3000),
                (
                    "Ready",
                    None,
                    Some(Requeue::After(Duration::from_secs(600))),
                ),
            ),
            (
                "applied, drift checks off",
                interval(Case::new().applied(99_999), 0),
                ("Ready", None, on_change),
            ),
            (
                "applied, drift held for approval: approved",
                approved(
                    hold(Case::new().applied(10).pending("d1", PlanTrigger::Drift)),
                    "d1",
                ),
                ("Applying", Some(ApplyApproved("d1".into())), on_change),
            ),
        ];
        for (story, case, (reason, job, requeue)) in table {
            let got = summary(&case.decide());
            assert_eq!(got, (reason.to_string(), job, requeue), "{story}");
        }
    }

    #[test]
    fn a_live_service_carries_the_finalizer_once_past_a_running_job() {
        assert!(report(&Case::new().decide()).finalizer);
        let mut c = Case::new();
        c.workspace = problem("TemplateNotFound", "x");
        assert!(report(&c.decide()).finalizer);
        c.running = Some(JobKind::Converge);
        assert!(!report(&c.decide()).finalizer);
        c.engine = Err("no tofu");
        assert!(!report(&c.decide()).finalizer);
    }

    #[test]
    fn messages_say_what_to_do() {
        let mut c = Case::new().pending("p1", PlanTrigger::Create);
        c.approval = Approval::Manual;
        let decided = c.decide();
        let health = &report(&decided).health;
        assert!(
            health.message().contains(
                "kubectl annotate msvc db -n shop-staging mahler.dev/approve-plan=p1 mahler.dev/approved-by=<your user name>"
            ),
            "{}",
            health.message()
        );
        assert!(
            health.message().contains("1 to add"),
            "{}",
            health.message()
        );

        let failed = Case::new().last_run(Operation::Apply, RunResult::Failed, HASH, 10);
        assert_eq!(
            report(&failed.decide()).health.message(),
            "apply: boom (retrying at 2026-12-01T12:00:20Z, or at once when the spec changes)"
        );
        // A run from before reasons were recorded still reads as a failure.
        let mut old = failed;
        old.tf.last_run.as_mut().unwrap().reason = None;
        assert_eq!(report(&old.decide()).health.reason(), "RunFailed");

        let blocked = Case::new().blocked(5);
        assert_eq!(
            report(&blocked.decide()).health.message(),
            "held by someone@elsewhere"
        );
        assert_eq!(
            report(&Case::new().applied(10).decide()).health.message(),
            "applied; outputs in Secret db-outputs"
        );
    }

    #[test]
    fn drift_found_is_reported_by_policy_and_kept_until_resolved() {
        // Held by policy.
        let mut c = Case::new().applied(10).pending("d1", PlanTrigger::Drift);
        c.drift_policy = DriftPolicy::Hold;
        let r = report(&c.decide()).clone();
        assert!(r.health.is_ready());
        assert_eq!(
            r.drifted.as_deref(),
            Some("drift held by driftPolicy Hold: plan d1 would change 1 resource(s)")
        );
        // Correct, but manual approval: awaits an owner.
        c.drift_policy = DriftPolicy::Correct;
        c.approval = Approval::Manual;
        assert!(
            report(&c.decide())
                .drifted
                .as_deref()
                .is_some_and(|m| m.contains("awaits approval by an environment owner"))
        );
        // Nothing new known: a True Drifted condition stays.
        let mut kept = Case::new().applied(10);
        kept.drifted = Some("changed outside OpenTofu");
        assert_eq!(
            report(&kept.decide()).drifted.as_deref(),
            Some("changed outside OpenTofu")
        );
    }

    #[test]
    fn every_branch_of_a_deletion() {
        let on_change = Some(Requeue::OnChange);
        let with = |f: &dyn Fn(&mut Case)| {
            let mut c = Case::new().applied(10).deleting();
            f(&mut c);
            c
        };
        let table: Vec<(&str, Case, Expected)> = vec![
            (
                "finalizer gone: nothing to do",
                with(&|c| c.has_finalizer = false),
                ("Nothing", None, None),
            ),
            (
                "a run in flight: wait for it",
                with(&|c| c.running = Some(JobKind::Converge)),
                ("Applying", None, on_change),
            ),
            (
                "Retain: keep everything",
                with(&|c| c.deletion_policy = DeletionPolicy::Retain),
                ("Release(drop_state=false)", None, None),
            ),
            (
                "force-delete: keep everything",
                with(&|c| c.forced = true),
                ("Release(drop_state=false)", None, None),
            ),
            (
                "nothing was ever applied",
                with(&|c| c.state_exists = false),
                ("Release(drop_state=true)", None, None),
            ),
            (
                "destroyed",
                Case::new()
                    .last_run(Operation::Destroy, RunResult::Succeeded, HASH, 5)
                    .deleting(),
                ("Release(drop_state=true)", None, None),
            ),
            (
                "no engine: say how out",
                with(&|c| c.engine = Err("no tofu")),
                ("EngineUnavailable", None, on_change),
            ),
            (
                "destroy failed 10 s ago",
                Case::new()
                    .applied(10)
                    .last_run(Operation::Destroy, RunResult::Failed, HASH, 10)
                    .deleting(),
                (
                    "DestroyFailed",
                    None,
                    Some(Requeue::After(Duration::from_secs(20))),
                ),
            ),
            (
                "lock Blocked",
                Case::new().applied(10).blocked(5).deleting(),
                ("LockHeld", None, Some(Requeue::After(LOCK_RETRY))),
            ),
            (
                "template gone: cannot destroy",
                with(&|c| {
                    c.workspace = problem("TemplateNotFound", "no ResourceTemplate named pg")
                }),
                ("TemplateNotFound", None, on_change),
            ),
            (
                "destroy",
                with(&|_| {}),
                (
                    "Destroying",
                    Some(JobKind::Destroy { lock: true }),
                    on_change,
                ),
            ),
            (
                "destroy in a terminating namespace: no new lock",
                with(&|c| c.terminating = true),
                (
                    "Destroying",
                    Some(JobKind::Destroy { lock: false }),
                    on_change,
                ),
            ),
        ];
        for (story, case, (reason, job, requeue)) in table {
            let got = summary(&case.decide());
            assert_eq!(got, (reason.to_string(), job, requeue), "{story}");
        }
    }

    #[test]
    fn a_failed_destroy_says_how_out_and_force_delete_takes_it() {
        let mut c = Case::new()
            .applied(10)
            .last_run(Operation::Destroy, RunResult::Failed, HASH, 10)
            .deleting();
        let message = report(&c.decide()).health.message().to_string();
        assert!(
            message.ends_with("To keep the infrastructure and finish deleting: kubectl annotate msvc db -n shop-staging mahler.dev/force-delete=true"),
            "{message}"
        );
        c.forced = true;
        let Action::Release(release) = c.decide() else {
            panic!("force-delete releases")
        };
        assert!(!release.drop_state);
        assert!(
            release.note.contains("removed without destroying"),
            "{}",
            release.note
        );
    }

    #[test]
    fn a_retained_state_in_a_terminating_namespace_is_announced() {
        let mut c = Case::new().applied(10).deleting();
        c.deletion_policy = DeletionPolicy::Retain;
        c.terminating = true;
        let Action::Release(release) = c.decide() else {
            panic!("Retain releases")
        };
        assert!(release.state_goes_with_namespace && !release.drop_state);
        assert_eq!(
            release.note,
            "deletionPolicy Retain: the infrastructure and its state (Secret tfstate-default-mahler-db) are kept"
        );
    }
}
