//! kstatus conditions (`Ready`, `Reconciling`, `Stalled`) shared by every kind.
//!
//! A reconciler decides one [`Health`] per pass; [`ConditionSet::apply`] turns it
//! into `Ready` plus, while true, `Reconciling` or `Stalled`, keeping `lastTransitionTime` when a condition's
//! status does not change, so an unchanged outcome produces an identical status
//! (and therefore no status write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The outcome of one reconcile pass, as users and GitOps tools should see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Everything this object asks for exists and is up to date.
    Ready { message: String },
    /// Work is under way and will finish without anyone acting (a rollout,
    /// a deletion in progress).
    Progressing { reason: String, message: String },
    /// No progress is possible until someone changes something: a missing
    /// reference, a conflict, an unsupported or invalid spec.
    Stalled { reason: String, message: String },
}

impl Health {
    pub fn ready(message: impl Into<String>) -> Self {
        Health::Ready {
            message: message.into(),
        }
    }
    pub fn progressing(reason: &str, message: impl Into<String>) -> Self {
        Health::Progressing {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn stalled(reason: &str, message: impl Into<String>) -> Self {
        Health::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready { .. })
    }
    pub fn reason(&self) -> &str {
        match self {
            Health::Ready { .. } => READY,
            Health::Progressing { reason, .. } | Health::Stalled { reason, .. } => reason,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            Health::Ready { message }
            | Health::Progressing { message, .. }
            | Health::Stalled { message, .. } => message,
        }
    }
}

/// The conditions of one object, updated in place from a [`Health`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConditionSet(pub Vec<Condition>);

impl ConditionSet {
    pub fn new(existing: Option<&Vec<Condition>>) -> Self {
        ConditionSet(existing.cloned().unwrap_or_default())
    }

    /// Sets Ready / Reconciling / Stalled from `health` for `generation`.
    pub fn apply(&mut self, health: &Health, generation: Option<i64>) {
        let (ready, reconciling, stalled) = match health {
            Health::Ready { .. } => (true, false, false),
            Health::Progressing { .. } => (false, true, false),
            Health::Stalled { .. } => (false, false, true),
        };
        let reason = health.reason();
        let message = health.message();
        self.set(READY, ready, reason, message, generation);
        // The abnormal-true conditions are present only while true (the
        // kstatus convention Flux follows): a healthy object reads plainly
        // in `kubectl describe`, and its status stays small.
        for (type_, active) in [(RECONCILING, reconciling), (STALLED, stalled)] {
            if active {
                self.set(type_, true, reason, message, generation);
            } else {
                self.0.retain(|c| c.type_ != type_);
            }
        }
    }

    /// Sets a condition of any type (e.g. `Drifted`).
    pub fn set(
        &mut self,
        type_: &str,
        status: bool,
        reason: &str,
        message: &str,
        generation: Option<i64>,
    ) {
        let status = if status { "True" } else { "False" }.to_string();
        let existing = self.0.iter_mut().find(|c| c.type_ == type_);
        match existing {
            Some(c) => {
                if c.status != status {
                    c.last_transition_time = now();
                }
                c.status = status;
                c.reason = reason.to_string();
                c.message = message.to_string();
                c.observed_generation = generation;
            }
            None => self.0.push(Condition {
                type_: type_.to_string(),
                status,
                reason: reason.to_string(),
                message: message.to_string(),
                observed_generation: generation,
                last_transition_time: now(),
            }),
        }
    }

    pub fn get(&self, type_: &str) -> Option<&Condition> {
        self.0.iter().find(|c| c.type_ == type_)
    }

    /// True when the Ready condition is True.
    pub fn is_ready(&self) -> bool {
        self.get(READY).is_some_and(|c| c.status == "True")
    }

    pub fn into_vec(self) -> Vec<Condition> {
        self.0
    }
}

/// Now, in whole seconds: the precision the API server stores, so a status
/// held in memory equals the same status read back.
fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_leaves_only_the_ready_condition() {
        let mut set = ConditionSet::default();
        set.apply(&Health::progressing("RollingOut", "0/1"), Some(3));
        assert_eq!(set.get(RECONCILING).unwrap().status, "True");
        set.apply(&Health::ready("all good"), Some(3));
        assert!(set.is_ready());
        assert!(set.get(RECONCILING).is_none() && set.get(STALLED).is_none());
        assert_eq!(set.get(READY).unwrap().observed_generation, Some(3));
    }

    #[test]
    fn stalled_carries_reason_on_ready_and_stalled() {
        let mut set = ConditionSet::default();
        set.apply(
            &Health::stalled("ProjectNotFound", "project shop does not exist"),
            Some(1),
        );
        assert!(!set.is_ready());
        assert_eq!(set.get(READY).unwrap().reason, "ProjectNotFound");
        assert_eq!(set.get(STALLED).unwrap().reason, "ProjectNotFound");
        assert_eq!(set.get(STALLED).unwrap().status, "True");
        assert!(set.get(RECONCILING).is_none());
    }

    #[test]
    fn same_health_twice_is_identical() {
        let mut set = ConditionSet::default();
        set.apply(&Health::progressing("RollingOut", "1/2 replicas"), Some(1));
        let before = set.clone();
        set.apply(&Health::progressing("RollingOut", "1/2 replicas"), Some(1));
        assert_eq!(
            before, set,
            "an unchanged outcome must not change the status"
        );
    }

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let mut set = ConditionSet::default();
        set.apply(&Health::progressing("RollingOut", "0/1"), Some(1));
        let t0 = Time(Timestamp::UNIX_EPOCH);
        set.0[0].last_transition_time = t0.clone();
        set.apply(
            &Health::progressing("RollingOut", "still 0/1, new message"),
            Some(1),
        );
        assert_eq!(set.get(READY).unwrap().last_transition_time, t0);
        set.apply(&Health::ready("done"), Some(1));
        assert_ne!(set.get(READY).unwrap().last_transition_time, t0);
    }
}
