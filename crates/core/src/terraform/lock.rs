//! The state lock: OpenTofu's Kubernetes backend holds it as a Lease
//! (`lock-tfstate-default-<suffix>`) whose holderIdentity is the lock id and
//! whose `app.terraform.io/lock-info` annotation says who took it and when.
//!
//! A lock whose holder is gone (its process died with an operator pod or was
//! killed) would block the workspace forever. Mahler releases it, and says
//! so, only when that is safe: the holder was a `tofu` process on this host
//! that no longer runs in the workspace, or the lock is older than any run
//! may last (every Mahler run has a deadline).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;
use serde_json::json;

pub const LOCK_INFO: &str = "app.terraform.io/lock-info";

/// What the backend writes into the lock-info annotation.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct LockInfo {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(rename = "Operation", default)]
    pub operation: String,
    #[serde(rename = "Who", default)]
    pub who: String,
    #[serde(rename = "Created", default)]
    pub created: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Free,
    /// Safe to release; the reason says why.
    Orphaned {
        info: LockInfo,
        why: String,
    },
    /// Someone may still be working; wait.
    Held {
        info: LockInfo,
        message: String,
    },
}

/// Decides what a held lock means. `local_process_alive`: whether a process
/// still runs with the workspace as its working directory on this host.
pub fn judge(
    info: Option<LockInfo>,
    hostname: &str,
    local_process_alive: bool,
    now: Timestamp,
    max_run: Duration,
) -> Verdict {
    let Some(info) = info else {
        return Verdict::Free;
    };
    let on_this_host = info
        .who
        .rsplit_once('@')
        .is_some_and(|(_, host)| host == hostname);
    if on_this_host && !local_process_alive {
        return Verdict::Orphaned {
            why: format!(
                "its holder ({}, {} since {}) ran on this host and is gone",
                info.who, info.operation, info.created
            ),
            info,
        };
    }
    let age = info
        .created
        .parse::<Timestamp>()
        .ok()
        .and_then(|t| now.since(t).ok())
        .and_then(|span| span.total(k8s_openapi::jiff::Unit::Second).ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    let limit = max_run + Duration::from_secs(120);
    match age {
        Some(age) if age > limit => Verdict::Orphaned {
            why: format!(
                "held by {} ({}) since {}, longer than any run may last ({}s)",
                info.who,
                info.operation,
                info.created,
                limit.as_secs()
            ),
            info,
        },
        _ => Verdict::Held {
            message: format!(
                "the state lock is held by {} ({} since {}); waiting for it (it is released automatically if its holder is gone after {}s)",
                info.who,
                info.operation,
                info.created,
                limit.as_secs()
            ),
            info,
        },
    }
}

/// The lock info of a held Lease, if any.
pub fn held(lease: &Lease) -> Option<LockInfo> {
    let holder = lease.spec.as_ref()?.holder_identity.as_deref()?;
    if holder.is_empty() {
        return None;
    }
    let info = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(LOCK_INFO))
        .and_then(|raw| serde_json::from_str::<LockInfo>(raw).ok())
        .unwrap_or_default();
    Some(LockInfo {
        id: holder.to_string(),
        ..info
    })
}

/// The merge patch that releases the lock the way `tofu force-unlock`
/// does, but only if it is still the same lock (resourceVersion
/// precondition).
pub fn release_patch(lease: &Lease) -> serde_json::Value {
    json!({
        "metadata": {
            "resourceVersion": lease.metadata.resource_version,
            "annotations": {LOCK_INFO: null},
        },
        "spec": {"holderIdentity": null},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(who: &str, created: &str) -> LockInfo {
        LockInfo {
            id: "abc".into(),
            operation: "OperationTypeApply".into(),
            who: who.into(),
            created: created.into(),
        }
    }

    #[test]
    fn a_lock_from_a_dead_local_process_is_orphaned() {
        let now: Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        let recent = "2026-11-27T11:59:00Z";
        let timeout = Duration::from_secs(900);
        assert_eq!(judge(None, "op-0", false, now, timeout), Verdict::Free);
        assert!(matches!(
            judge(Some(info("root@op-0", recent)), "op-0", false, now, timeout),
            Verdict::Orphaned { .. }
        ));
        // Still running here, or held from another host: wait.
        assert!(matches!(
            judge(Some(info("root@op-0", recent)), "op-0", true, now, timeout),
            Verdict::Held { .. }
        ));
        assert!(matches!(
            judge(
                Some(info("root@laptop", recent)),
                "op-0",
                false,
                now,
                timeout
            ),
            Verdict::Held { .. }
        ));
        // Older than any run may last: orphaned wherever it came from.
        let Verdict::Orphaned { why, .. } = judge(
            Some(info("root@laptop", "2026-11-27T10:00:00.123456Z")),
            "op-0",
            false,
            now,
            timeout,
        ) else {
            panic!("expected orphaned")
        };
        assert!(why.contains("longer than any run may last"), "{why}");
    }

    #[test]
    fn reads_the_backend_s_lease() {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {"name": "lock-tfstate-default-mahler-db", "annotations": {
                LOCK_INFO: r#"{"ID":"1b2c","Operation":"OperationTypeApply","Info":"","Who":"root@op-0","Version":"1.12.6","Created":"2026-11-27T11:59:00Z","Path":""}"#
            }},
            "spec": {"holderIdentity": "1b2c"}
        }))
        .unwrap();
        let got = held(&lease).unwrap();
        assert_eq!((got.id.as_str(), got.who.as_str()), ("1b2c", "root@op-0"));
        let free: Lease =
            serde_json::from_value(json!({"metadata": {"name": "x"}, "spec": {}})).unwrap();
        assert_eq!(held(&free), None);
    }
}
