//! Plans: the id an approval names, and the plan as a run reports it.

use mahler_api::terraform::PlanTrigger;
use sha2::{Digest, Sha256};

use super::job::Plan;
use super::stream::Stream;
use super::workspace;

/// The plan a run's `-json` stream describes: counts, why, and the first
/// 50 changes.
pub fn from_stream(workspace_hash: &str, stream: &Stream, id: String, drift: bool) -> Plan {
    let (add, change, destroy) = stream.counts();
    let trigger = if drift {
        PlanTrigger::Drift
    } else if stream.changes.iter().all(|c| c.action == "create") {
        PlanTrigger::Create
    } else {
        PlanTrigger::Update
    };
    Plan {
        id,
        workspace_hash: workspace_hash.to_string(),
        add,
        change,
        destroy,
        trigger,
        resources: stream.changes.iter().take(50).cloned().collect(),
    }
}

/// A plan id: the workspace plus the exact changes, short enough to type.
pub fn plan_id(workspace_hash: &str, changes: &str) -> String {
    let mut h = Sha256::new();
    h.update(workspace_hash.as_bytes());
    h.update(strip_timestamp(changes).as_bytes());
    workspace::hex(&h.finalize())[..12].to_string()
}

/// `tofu show -json` includes a `timestamp`; everything else is the plan.
fn strip_timestamp(show: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(show) {
        Ok(mut v) => {
            if let Some(o) = v.as_object_mut() {
                o.remove("timestamp");
                let keep = ["resource_changes", "output_changes", "resource_drift"];
                o.retain(|k, _| keep.contains(&k.as_str()));
            }
            v.to_string()
        }
        Err(_) => show.to_string(),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_ignore_the_timestamp_only() {
        let a = plan_id("h", r#"{"timestamp":"1","resource_changes":[{"a":1}]}"#);
        let b = plan_id("h", r#"{"timestamp":"2","resource_changes":[{"a":1}]}"#);
        let c = plan_id("h", r#"{"timestamp":"2","resource_changes":[{"a":2}]}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, plan_id("h2", r#"{"resource_changes":[{"a":1}]}"#));
    }
}
