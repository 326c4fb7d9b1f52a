//! `GET /api/v1/environments/{env}/events`: server-sent events of status
//! changes of the environment's Services and Connections, from two kube
//! watches made as the requesting user. An event per change of the
//! Ready state, reason or message (not per write); keep-alive comments
//! between; the stream ends when the server shuts down.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, stream};
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event as WatchEvent};
use mahler_api::{Connection, Service};
use mahler_client::summary::Summary;

use crate::App;
use crate::auth::Identity;
use crate::error::ApiError;
use crate::handlers::{Loc, Params};
use crate::names::Kind;
use crate::views::StatusEvent;

/// One watch event reduced to what the stream needs.
enum Change {
    /// A (re)list started for a kind.
    Init(&'static str),
    Seen(StatusEvent),
    Deleted(StatusEvent),
    /// A re-list finished: what it did not see is gone.
    InitDone(&'static str),
    Error(String),
}

/// Whether a watch error means the caller may no longer watch (the token
/// was refused or RBAC revoked): the stream ends instead of retrying.
fn refused(e: &watcher::Error) -> bool {
    let code = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code,
        watcher::Error::WatchError(s) => s.code,
        _ => 0,
    };
    matches!(code, 401 | 403)
}

fn changes<K, F>(
    api: Api<K>,
    kind: &'static str,
    summary: F,
    end: Arc<tokio::sync::watch::Sender<bool>>,
) -> impl Stream<Item = Change> + Send
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
    F: Fn(&K) -> Summary + Send + 'static,
{
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |ev| match ev {
            Ok(WatchEvent::Init) => Change::Init(kind),
            Ok(WatchEvent::InitDone) => Change::InitDone(kind),
            Ok(WatchEvent::InitApply(o) | WatchEvent::Apply(o)) => {
                Change::Seen(StatusEvent::of(kind, &summary(&o), false))
            }
            Ok(WatchEvent::Delete(o)) => Change::Deleted(StatusEvent::of(kind, &summary(&o), true)),
            Err(e) => {
                if refused(&e) {
                    end.send_replace(true);
                }
                Change::Error(e.to_string())
            }
        })
}

/// Remembers the last state sent per object and decides what to send.
#[derive(Default)]
pub struct Dedup {
    last: HashMap<(String, String), StatusEvent>,
    listing: HashMap<&'static str, HashSet<String>>,
}

impl Dedup {
    fn step(&mut self, change: Change) -> Vec<Event> {
        let mut out = Vec::new();
        match change {
            Change::Init(kind) => {
                self.listing.insert(kind, HashSet::new());
            }
            Change::Seen(ev) => {
                if let Some(seen) = self.listing.get_mut(ev.kind.as_str()) {
                    seen.insert(ev.name.clone());
                }
                if let Some(e) = self.update(ev) {
                    out.push(e);
                }
            }
            Change::Deleted(ev) => {
                self.last.remove(&(ev.kind.clone(), ev.name.clone()));
                out.push(status_event(&ev));
            }
            Change::InitDone(kind) => {
                let seen = self.listing.remove(kind).unwrap_or_default();
                let gone: Vec<_> = self
                    .last
                    .keys()
                    .filter(|(k, n)| k == kind && !seen.contains(n))
                    .cloned()
                    .collect();
                for key in gone {
                    if let Some(mut ev) = self.last.remove(&key) {
                        ev.deleted = true;
                        out.push(status_event(&ev));
                    }
                }
            }
            Change::Error(message) => {
                out.push(
                    Event::default()
                        .event("error")
                        .json_data(serde_json::json!({"message": message}))
                        .unwrap_or_default(),
                );
            }
        }
        out
    }

    /// The event to send for `ev`, if it differs from the last one sent.
    pub fn update(&mut self, ev: StatusEvent) -> Option<Event> {
        let key = (ev.kind.clone(), ev.name.clone());
        if self.last.get(&key) == Some(&ev) {
            return None;
        }
        let e = status_event(&ev);
        self.last.insert(key, ev);
        Some(e)
    }
}

fn status_event(ev: &StatusEvent) -> Event {
    Event::default()
        .event("status")
        .json_data(ev)
        .unwrap_or_default()
}

pub async fn handler(
    State(app): State<Arc<App>>,
    Extension(id): Extension<Arc<Identity>>,
    p: Params,
) -> Result<Response, ApiError> {
    let loc = Loc::from_params(Kind::Service, p)?;
    let ns = loc.namespace.clone().unwrap_or_default();
    let services = Api::<Service>::namespaced(id.client.clone(), &ns);
    let connections = Api::<Connection>::namespaced(id.client.clone(), &ns);
    // Denied or broken before the stream starts: a plain error response.
    let lp = ListParams::default().limit(1);
    services
        .list(&lp)
        .await
        .map_err(|e| ApiError::from_kube(e, &loc.action("watch")))?;
    let conn_loc = Loc {
        kind: Kind::Connection,
        ..loc.clone()
    };
    connections
        .list(&lp)
        .await
        .map_err(|e| ApiError::from_kube(e, &conn_loc.action("watch")))?;
    let (end, mut ended) = tokio::sync::watch::channel(false);
    let end = Arc::new(end);
    let merged = stream::select(
        changes(services, "Service", Summary::of_service, end.clone()).boxed(),
        changes(
            connections,
            "Connection",
            |c: &Connection| {
                Summary::of(
                    c,
                    c.status
                        .as_ref()
                        .map(|s| s.conditions.as_slice())
                        .unwrap_or_default(),
                )
            },
            end,
        )
        .boxed(),
    );
    let mut dedup = Dedup::default();
    let events = merged
        .flat_map(move |c| stream::iter(dedup.step(c)))
        .map(Ok::<_, Infallible>);
    // The stream ends on shutdown, when a watch is refused (the error event
    // is sent first), or at its deadline: the token's expiry or
    // --stream-max-duration, whichever comes first. A reconnect is a new
    // request, reviewed again.
    let mut shutdown = app.shutdown.clone();
    let lifetime = id
        .expires
        .and_then(|e| e.duration_since(std::time::SystemTime::now()).ok())
        .map_or(app.stream_max, |left| left.min(app.stream_max));
    let stop = async move {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {}
            _ = ended.wait_for(|e| *e) => {}
            _ = tokio::time::sleep(lifetime) => {}
        }
    };
    let user = id.username.clone();
    tracing::debug!(user, namespace = ns, "event stream opened");
    Ok(Sse::new(events.take_until(stop))
        .keep_alive(
            KeepAlive::new()
                .interval(Duration::from_secs(15))
                .text("keep-alive"),
        )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, ready: bool, reason: &str) -> StatusEvent {
        StatusEvent {
            kind: "Service".into(),
            name: name.into(),
            ready,
            state: if ready { "Ready" } else { "Progressing" }.into(),
            reason: reason.into(),
            message: String::new(),
            deleted: false,
        }
    }

    #[test]
    fn only_changes_are_sent_and_relists_find_deletions() {
        let mut d = Dedup::default();
        assert_eq!(d.step(Change::Init("Service")).len(), 0);
        assert_eq!(
            d.step(Change::Seen(ev("api", false, "RollingOut"))).len(),
            1
        );
        assert_eq!(d.step(Change::Seen(ev("db", true, "Ready"))).len(), 1);
        assert_eq!(d.step(Change::InitDone("Service")).len(), 0);
        assert_eq!(
            d.step(Change::Seen(ev("api", false, "RollingOut"))).len(),
            0,
            "same state"
        );
        assert_eq!(d.step(Change::Seen(ev("api", true, "Ready"))).len(), 1);
        // A re-list that no longer sees db reports it deleted.
        d.step(Change::Init("Service"));
        d.step(Change::Seen(ev("api", true, "Ready")));
        assert_eq!(d.step(Change::InitDone("Service")).len(), 1);
        assert!(
            !d.last
                .contains_key(&("Service".to_string(), "db".to_string()))
        );
    }
}
