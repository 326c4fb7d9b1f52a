//! How often a failing object is retried, and what is known to be gone.
//!
//! Owns the per-object retry pacing of every controller: [`Retries`] keeps
//! each failing object's exponential backoff and the instant before which
//! it must not run again, and [`Gone`] remembers objects whose own writes
//! met a `404` (deleted while the cache still showed them). It must not
//! decide what a pass does; it only says whether a pass may run now.
//!
//! Why a gate and not only the requeue delay: kube's scheduler runs an
//! object at the earliest time anyone asked for, so any re-trigger (a
//! child's watch event, a related object's change, the resync) used to cut
//! a failing object's backoff short. An object whose pass created a child
//! that the garbage collector then deleted re-triggered itself through that
//! child at the speed of the watch: thousands of failing passes a minute,
//! each taking a concurrency slot. The gate holds whatever re-triggers it;
//! only a change of the object's own spec (a new generation, or its
//! deletion) runs it early, so a user's fix is acted on at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use parking_lot::Mutex;

/// The first retry waits about this long (randomised ±50 %)...
const INITIAL: Duration = Duration::from_secs(1);
/// ...and the wait grows by 1.5× per failure up to this.
const MAX: Duration = Duration::from_secs(300);
/// An entry not refreshed for this long belongs to an object that stopped
/// failing without a successful pass (it was deleted): dropped.
/// (Three times the longest delay, 450 s with jitter, plus queueing.)
const STALE: Duration = Duration::from_secs(3 * MAX.as_secs());
/// Entries are swept for staleness when the map grows past this.
const SWEEP_AT: usize = 256;

/// What a failure is tied to: an edit of the object's spec, or its
/// deletion, lifts the gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Revision {
    pub generation: Option<i64>,
    pub deleting: bool,
}

impl Revision {
    pub fn of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        Revision {
            generation: meta.generation,
            deleting: meta.deletion_timestamp.is_some(),
        }
    }
}

struct Failing {
    backoff: ExponentialBackoff,
    /// The last error reported on the object (reported again only when it changes).
    last_error: String,
    /// No pass of the same revision before this.
    not_before: Instant,
    revision: Revision,
    /// When it last failed.
    at: Instant,
}

/// Per-object backoff of failing passes, by object key.
#[derive(Default)]
pub struct Retries(Mutex<HashMap<String, Failing>>);

impl Retries {
    /// How long `key` must still wait, if it failed recently at the same
    /// revision: its pass is held for that long, whoever asked for it.
    pub fn hold(&self, key: &str, revision: Revision, now: Instant) -> Option<Duration> {
        let failing = self.0.lock();
        let entry = failing.get(key)?;
        if entry.revision != revision {
            return None;
        }
        entry
            .not_before
            .checked_duration_since(now)
            .filter(|wait| !wait.is_zero())
    }

    /// Records a failed pass: how long until the next, and whether `message`
    /// is news (not the error the object's last failure reported). With
    /// `hold` false the delay is only the requeue's: a re-trigger (the
    /// watch event bringing what the pass conflicted with) runs it at once.
    pub fn failed(
        &self,
        key: &str,
        revision: Revision,
        message: &str,
        hold: bool,
        now: Instant,
    ) -> (Duration, bool) {
        let mut failing = self.0.lock();
        if failing.len() >= SWEEP_AT {
            failing.retain(|_, f| now.saturating_duration_since(f.at) < STALE);
        }
        let entry = failing.entry(key.to_string()).or_insert_with(|| Failing {
            backoff: ExponentialBackoffBuilder::new()
                .with_initial_interval(INITIAL)
                .with_max_interval(MAX)
                .with_max_elapsed_time(None)
                .build(),
            last_error: String::new(),
            not_before: now,
            revision,
            at: now,
        });
        let news = entry.last_error != message;
        if news {
            entry.last_error = message.to_string();
        }
        let delay = entry.backoff.next_backoff().unwrap_or(MAX);
        entry.not_before = if hold { now + delay } else { now };
        entry.revision = revision;
        entry.at = now;
        (delay, news)
    }

    /// A pass succeeded: the next failure starts from the initial delay.
    pub fn succeeded(&self, key: &str) {
        let mut failing = self.0.lock();
        if !failing.is_empty() {
            failing.remove(key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// Objects (by uid) whose own write met a `404`: deleted while the cache
/// still showed them. Their passes end at once, with no write, until the
/// cache drops them; a new object of the same name has another uid.
#[derive(Default)]
pub struct Gone(Mutex<HashMap<String, Instant>>);

impl Gone {
    /// Kept this long at most: the watch delivers the deletion long before.
    const TTL: Duration = Duration::from_secs(600);

    pub fn insert(&self, uid: &str, now: Instant) {
        // Every stored object has a uid; without one there is nothing to key on.
        if uid.is_empty() {
            return;
        }
        let mut gone = self.0.lock();
        if gone.len() >= SWEEP_AT {
            gone.retain(|_, at| now.saturating_duration_since(*at) < Self::TTL);
        }
        gone.insert(uid.to_string(), now);
    }

    pub fn contains(&self, uid: &str, now: Instant) -> bool {
        self.0
            .lock()
            .get(uid)
            .is_some_and(|at| now.saturating_duration_since(*at) < Self::TTL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REV: Revision = Revision {
        generation: Some(1),
        deleting: false,
    };

    #[test]
    fn a_failed_object_is_held_until_its_backoff_elapses_whoever_triggers_it() {
        let retries = Retries::default();
        let t0 = Instant::now();
        assert_eq!(retries.hold("a", REV, t0), None, "never failed: runs");
        let (delay, news) = retries.failed("a", REV, "boom", true, t0);
        assert!(news);
        // Randomised ±50 % around 1 s.
        assert!(delay >= Duration::from_millis(500) && delay <= Duration::from_millis(1500));
        // Every trigger before the delay is held for the rest of it.
        for ms in [0, 1, 100, 400] {
            let now = t0 + Duration::from_millis(ms);
            assert_eq!(
                retries.hold("a", REV, now),
                Some(delay - Duration::from_millis(ms))
            );
        }
        assert_eq!(retries.hold("a", REV, t0 + delay), None);
        // Another object is not held.
        assert_eq!(retries.hold("b", REV, t0), None);
    }

    #[test]
    fn the_delay_grows_per_failure_up_to_five_minutes_and_resets_on_success() {
        let retries = Retries::default();
        let mut now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..30 {
            let (delay, _) = retries.failed("a", REV, "boom", true, now);
            delays.push(delay);
            now += delay;
        }
        // 1.5× per failure with ±50 % jitter: the 10th is well past the first.
        assert!(delays[9] > delays[0] * 10, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= MAX + MAX / 2), "{delays:?}");
        assert!(delays[29] >= MAX / 2, "{delays:?}");
        retries.succeeded("a");
        let (delay, _) = retries.failed("a", REV, "boom", true, now);
        assert!(delay <= Duration::from_millis(1500), "reset: {delay:?}");
    }

    #[test]
    fn an_edit_or_a_deletion_of_the_object_lifts_the_hold() {
        let retries = Retries::default();
        let t0 = Instant::now();
        retries.failed("a", REV, "boom", true, t0);
        let edited = Revision {
            generation: Some(2),
            deleting: false,
        };
        let deleting = Revision {
            generation: Some(1),
            deleting: true,
        };
        assert_eq!(retries.hold("a", edited, t0), None);
        assert_eq!(retries.hold("a", deleting, t0), None);
        // Failing again at the new revision holds that one.
        let (delay, _) = retries.failed("a", edited, "boom", true, t0);
        assert_eq!(retries.hold("a", edited, t0), Some(delay));
    }

    #[test]
    fn a_conflict_is_retried_by_the_next_trigger_not_held() {
        let retries = Retries::default();
        let t0 = Instant::now();
        let (delay, _) = retries.failed("a", REV, "conflict", false, t0);
        assert!(delay >= Duration::from_millis(500));
        assert_eq!(retries.hold("a", REV, t0), None);
    }

    #[test]
    fn the_same_error_again_is_not_news() {
        let retries = Retries::default();
        let now = Instant::now();
        assert!(retries.failed("a", REV, "boom", true, now).1);
        assert!(!retries.failed("a", REV, "boom", true, now).1);
        assert!(retries.failed("a", REV, "bang", true, now).1);
    }

    #[test]
    fn entries_of_objects_that_stopped_failing_are_swept() {
        let retries = Retries::default();
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            retries.failed(&format!("old{i}"), REV, "boom", true, t0);
        }
        assert_eq!(retries.len(), SWEEP_AT);
        retries.failed("new", REV, "boom", true, t0 + STALE);
        assert_eq!(retries.len(), 1);
    }

    #[test]
    fn gone_objects_are_remembered_by_uid_for_a_while() {
        let gone = Gone::default();
        let t0 = Instant::now();
        gone.insert("uid-1", t0);
        gone.insert("", t0);
        assert!(!gone.contains("", t0), "no uid, no memory");
        assert!(gone.contains("uid-1", t0 + Duration::from_secs(1)));
        assert!(!gone.contains("uid-2", t0));
        assert!(!gone.contains("uid-1", t0 + Gone::TTL));
    }
}
