//! Waiting until a Mahler object is Ready, driven by a watch (no polling),
//! ending early with the reason when it stalls.

use std::fmt::Debug;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::wait::await_condition;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;

use crate::summary::{State, Summary};

/// Why a wait ended without Ready.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error("{name} is stalled: {reason}: {message}")]
    Stalled {
        name: String,
        reason: String,
        message: String,
    },
    #[error("{name} was deleted while waiting for it")]
    Deleted { name: String },
    #[error("{name} is not Ready after {}s (last: {reason}: {message})", timeout.as_secs())]
    TimedOut {
        name: String,
        timeout: Duration,
        reason: String,
        message: String,
    },
    #[error("watching {name}: {source}")]
    Watch {
        name: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
}

/// Waits until `name` is Ready for its current generation, or stalled, or
/// `timeout` passes. `conditions` reads an object's conditions.
pub async fn until_ready<K>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    conditions: fn(&K) -> &[Condition],
) -> Result<K, WaitError>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let settled = move |obj: Option<&K>| {
        obj.is_none_or(|o| {
            matches!(
                Summary::of(o, conditions(o)).state,
                State::Ready | State::Stalled
            )
        })
    };
    let last = |obj: Option<&K>| {
        obj.map(|o| Summary::of(o, conditions(o)))
            .map(|s| (s.reason, s.message))
            .unwrap_or_default()
    };
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, settled)).await {
        Err(_) => {
            let current = api.get_opt(name).await.ok().flatten();
            let (reason, message) = last(current.as_ref());
            Err(WaitError::TimedOut {
                name: name.to_string(),
                timeout,
                reason,
                message,
            })
        }
        Ok(Err(source)) => Err(WaitError::Watch {
            name: name.to_string(),
            source,
        }),
        Ok(Ok(None)) => Err(WaitError::Deleted {
            name: name.to_string(),
        }),
        Ok(Ok(Some(obj))) => {
            let s = Summary::of(&obj, conditions(&obj));
            match s.state {
                State::Ready => Ok(obj),
                _ => Err(WaitError::Stalled {
                    name: name.to_string(),
                    reason: s.reason,
                    message: s.message,
                }),
            }
        }
    }
}
