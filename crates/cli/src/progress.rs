//! `--wait`: follow an object until it is Ready for its current generation,
//! showing what happens as it happens: its conditions as they change, for
//! a Service the Deployment's updated/available replicas and the Warning
//! Events of its pods. A spinner on a terminal, plain lines otherwise. Ends
//! Ready (exit 0), Stalled (1, with the reason), deleted (1) or timed out (4).
//! Driven by watches, no polling.

use std::fmt::Debug;
use std::io::IsTerminal;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use mahler_client::summary::{State, Summary};
use serde::de::DeserializeOwned;

use crate::error::{CliError, Exit, Result};
use crate::output::Printer;

/// After this long without any report from the operator, say so once.
const UNOBSERVED_AFTER: Duration = Duration::from_secs(15);

/// Where progress goes: a spinner with lines printed above it, or lines.
struct Display {
    bar: Option<ProgressBar>,
}

impl Display {
    fn new(label: &str) -> Self {
        if !std::io::stdout().is_terminal() {
            return Display { bar: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg} ({elapsed})")
                .expect("a valid template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ "),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(100));
        Display { bar: Some(bar) }
    }

    /// A line that stays (a condition change, a warning).
    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }

    /// The spinner's current state (on a terminal only; lines say it otherwise).
    fn status(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// What to follow besides the object: a Service's Deployment and the Warning
/// Events of its pods.
pub struct Children {
    pub client: kube::Client,
    pub namespace: String,
    pub service: String,
}

/// Waits until `name` is Ready; see the module comment.
pub async fn wait_ready<K>(
    printer: &Printer,
    api: Api<K>,
    kind: &str,
    name: &str,
    timeout: Duration,
    conditions: fn(&K) -> &[Condition],
    children: Option<Children>,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let label = format!("{kind} {name}");
    let display = Display::new(&label);
    let result = follow(
        printer, &display, api, &label, name, timeout, conditions, children,
    )
    .await;
    display.finish();
    result
}

enum Update<K> {
    Object(Option<K>),
    Deployment(Box<Deployment>),
    Warning(Box<Event>),
}

#[allow(clippy::too_many_arguments)]
async fn follow<K>(
    printer: &Printer,
    display: &Display,
    api: Api<K>,
    label: &str,
    name: &str,
    timeout: Duration,
    conditions: fn(&K) -> &[Condition],
    children: Option<Children>,
) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let started = jiff::Timestamp::now();
    let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // Deletions matter too (the wait ends), so the raw events, not touched_objects.
    let object = watcher(api, by_name)
        .filter_map(|e| async move {
            match e {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    Some(Ok(Update::Object(Some(o))))
                }
                Ok(watcher::Event::Delete(_)) => Some(Ok(Update::Object(None))),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .boxed();
    let mut streams = vec![object];
    if let Some(ch) = &children {
        let deployments = Api::<Deployment>::namespaced(ch.client.clone(), &ch.namespace);
        streams.push(
            watcher(
                deployments,
                watcher::Config::default().fields(&format!("metadata.name={}", ch.service)),
            )
            .touched_objects()
            .map_ok(|d| Update::Deployment(Box::new(d)))
            .boxed(),
        );
        let events = Api::<Event>::namespaced(ch.client.clone(), &ch.namespace);
        streams.push(
            watcher(events, watcher::Config::default().fields("type=Warning"))
                .touched_objects()
                .map_ok(|e| Update::Warning(Box::new(e)))
                .boxed(),
        );
    }
    let mut updates = futures::stream::select_all(streams);
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let unobserved = tokio::time::sleep(UNOBSERVED_AFTER);
    tokio::pin!(unobserved);
    let mut said_unobserved = false;
    let mut last: Option<K> = None;
    let mut last_line = String::new();
    let mut last_replicas = String::new();
    let mut seen_events = std::collections::BTreeSet::new();
    let service = children.as_ref().map(|c| c.service.clone());
    loop {
        let update = tokio::select! {
            u = updates.next() => u,
            _ = &mut deadline => {
                let (reason, message) = last.as_ref().map(|o| {
                    let s = Summary::of(o, conditions(o));
                    (s.reason, s.message)
                }).unwrap_or_default();
                let observed = last.as_ref().is_some_and(|o| Summary::of(o, conditions(o)).state != State::Unknown);
                let mut err = CliError::new(
                    Exit::NotReady,
                    format!(
                        "{label} is not Ready after {}{}",
                        humanize(timeout),
                        if reason.is_empty() { String::new() } else { format!(" (last: {reason}: {message})") }
                    ),
                );
                if !observed {
                    err = err.hint("the operator never reported on it: is it running? `kubectl -n mahler-system get deployment mahler`");
                } else {
                    err = err.hint(format!("`mahler explain {name}` says why"));
                }
                return Err(err);
            }
            _ = &mut unobserved, if !said_unobserved => {
                said_unobserved = true;
                let observed = last.as_ref().is_some_and(|o| Summary::of(o, conditions(o)).state != State::Unknown);
                if !observed {
                    display.line(&printer.yellow(&format!(
                        "{label}: no report from the operator after {}s: is it running? (kubectl -n mahler-system get deployment mahler)",
                        UNOBSERVED_AFTER.as_secs()
                    )));
                }
                continue;
            }
        };
        let update = match update {
            None => return Err(CliError::failure(format!("{label}: the watch ended"))),
            Some(Err(e)) => {
                return Err(match e {
                    watcher::Error::InitialListFailed(k)
                    | watcher::Error::WatchStartFailed(k)
                    | watcher::Error::WatchFailed(k) => {
                        crate::error::from_kube(k, label, "the cluster")
                    }
                    other => CliError::failure(format!("{label}: {other}")),
                });
            }
            Some(Ok(u)) => u,
        };
        match update {
            Update::Object(None) => {
                return Err(CliError::failure(format!(
                    "{label} was deleted while waiting"
                )));
            }
            Update::Object(Some(obj)) => {
                if obj.meta().deletion_timestamp.is_some() {
                    return Err(CliError::failure(format!("{label} is being deleted")));
                }
                let s = Summary::of(&obj, conditions(&obj));
                let line = match s.state {
                    State::Unknown => format!(
                        "waiting for the operator to observe generation {}",
                        obj.meta().generation.unwrap_or_default()
                    ),
                    st if s.reason.is_empty() || s.reason == st.as_str() => {
                        format!("{}: {}", st.as_str(), s.message)
                    }
                    st => format!("{} {}: {}", st.as_str(), s.reason, s.message),
                };
                if line != last_line {
                    let painted = match s.state {
                        State::Ready => printer.green(&line),
                        State::Stalled => printer.red(&line),
                        _ => line.clone(),
                    };
                    display.line(&format!("{label}: {painted}"));
                    display.status(&line);
                    last_line = line;
                }
                match s.state {
                    State::Ready => return Ok(obj),
                    State::Stalled => {
                        return Err(CliError::failure(format!(
                            "{label} failed: {}: {}",
                            s.reason, s.message
                        ))
                        .hint(format!("`mahler explain {name}` follows the chain")));
                    }
                    _ => {}
                }
                last = Some(obj);
            }
            Update::Deployment(d) => {
                let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let st = d.status.unwrap_or_default();
                // Counts of a spec the Deployment controller has not seen yet
                // describe the old rollout.
                if st.observed_generation < d.metadata.generation {
                    continue;
                }
                let line = format!(
                    "replicas: {}/{desired} updated, {}/{desired} available",
                    st.updated_replicas.unwrap_or(0),
                    st.available_replicas.unwrap_or(0)
                );
                if line != last_replicas {
                    display.line(&format!("{label}: {line}"));
                    display.status(&line);
                    last_replicas = line;
                }
            }
            Update::Warning(ev) => {
                let Some(svc) = &service else { continue };
                let obj = ev.involved_object.name.clone().unwrap_or_default();
                let ours = &obj == svc || obj.starts_with(&format!("{svc}-"));
                let when = ev
                    .last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or(ev.event_time.as_ref().map(|t| t.0))
                    .or(ev.metadata.creation_timestamp.as_ref().map(|t| t.0));
                let recent =
                    when.is_some_and(|t| t >= started - jiff::SignedDuration::from_secs(2));
                let key = (ev.name_any(), ev.count.unwrap_or(1));
                if ours && recent && seen_events.insert(key) {
                    display.line(&printer.yellow(&format!(
                        "warning: {} {obj}: {}: {}",
                        ev.involved_object.kind.clone().unwrap_or_default(),
                        ev.reason.clone().unwrap_or_default(),
                        ev.message.clone().unwrap_or_default().trim()
                    )));
                }
            }
        }
    }
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(60) && s >= 60 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}
