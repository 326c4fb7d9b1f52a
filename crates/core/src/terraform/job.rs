//! The vocabulary between a template Service's reconcile and the engine:
//! which job to run ([`JobKind`]), and how it ended ([`JobResult`],
//! [`Outcome`]). Plain data: the engine produces it, [`super::decide`] and
//! the controller read it, and only the controller turns it into status.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use mahler_api::PlannedResource;
use mahler_api::terraform::{FailureReason, Operation, PlanTrigger, RunResult};

/// What a job does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobKind {
    /// Plan and apply in one `tofu apply` (auto approval).
    Converge,
    /// Plan and stop: the plan waits for approval.
    PlanOnly,
    /// Apply the plan with this id (approved); a different plan is not applied.
    ApplyApproved(String),
    /// Plan against the real infrastructure; `correct` applies what drifted.
    DriftCheck { correct: bool },
    /// Destroy everything in the state. `lock: false` when the namespace is
    /// terminating (no new Lease can be created there).
    Destroy { lock: bool },
}

impl JobKind {
    pub fn operation(&self) -> Operation {
        match self {
            JobKind::Converge | JobKind::ApplyApproved(_) => Operation::Apply,
            JobKind::PlanOnly => Operation::Plan,
            JobKind::DriftCheck { .. } => Operation::DriftCheck,
            JobKind::Destroy { .. } => Operation::Destroy,
        }
    }
}

/// One output value, as a string (non-strings JSON-encoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputValue {
    pub value: String,
    pub sensitive: bool,
}

/// A plan as OpenTofu reported it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Identifies this exact plan (what an approval names).
    pub id: String,
    /// The workspace it was made from.
    pub workspace_hash: String,
    pub add: i32,
    pub change: i32,
    pub destroy: i32,
    pub trigger: PlanTrigger,
    /// The first 50 changes.
    pub resources: Vec<PlannedResource>,
}

impl Plan {
    /// Whether the plan changes anything.
    pub fn changes(&self) -> i32 {
        self.add + self.change + self.destroy
    }
}

/// A run that failed: which step, how it ended, and OpenTofu's diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", reason.step())]
pub struct RunFailure {
    pub reason: FailureReason,
    /// `Failed`, `TimedOut` or `Cancelled`.
    pub result: RunResult,
    pub message: String,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The workspace is applied (possibly with no changes); its outputs.
    Applied {
        plan: Plan,
        outputs: BTreeMap<String, OutputValue>,
    },
    /// A plan with changes waits for approval (manual, or drift held).
    Planned {
        plan: Plan,
    },
    /// A drift check found nothing to change.
    InSync {
        outputs: BTreeMap<String, OutputValue>,
    },
    Destroyed,
    /// The state lock is held by someone who may still be working.
    LockHeld {
        message: String,
    },
    Failed(RunFailure),
}

impl Outcome {
    /// The label of the `mahler_tofu_runs` metric.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Applied { .. } => "Applied",
            Outcome::Planned { .. } => "Planned",
            Outcome::InSync { .. } => "InSync",
            Outcome::Destroyed => "Destroyed",
            Outcome::LockHeld { .. } => "LockHeld",
            Outcome::Failed(f) => f.result.as_str(),
        }
    }
}

/// Something a run wants the user told, as an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: NoteReason,
    pub message: String,
}

/// Why a run speaks up besides its outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoteReason {
    /// An orphaned state lock was released before the run.
    LockRecovered,
    /// A drift check found changes made outside OpenTofu.
    DriftDetected,
}

impl NoteReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            NoteReason::LockRecovered => "LockRecovered",
            NoteReason::DriftDetected => "DriftDetected",
        }
    }
}

/// A finished job.
#[derive(Clone, Debug, PartialEq)]
pub struct JobResult {
    pub kind: JobKind,
    pub workspace_hash: String,
    pub started: Timestamp,
    pub duration: Duration,
    pub outcome: Outcome,
    pub notes: Vec<Note>,
}

/// What the engine is doing for one Service.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Idle,
    Running { kind: JobKind, started: Timestamp },
    Done(Box<JobResult>),
}
