//! One line of truth per object, from its kstatus conditions: Ready, or
//! progressing or stalled and why. Pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Resource, ResourceExt};
use mahler_api::Service;
use mahler_api::names::NOT_IMPLEMENTED;
use mahler_api::{READY, STALLED};

/// Where an object stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Ready,
    /// Working; it will get there without anyone acting.
    Progressing,
    /// Stuck until someone changes something.
    Stalled,
    /// The operator has not reported on this generation yet.
    Unknown,
}

impl State {
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Ready => "Ready",
            State::Progressing => "Progressing",
            State::Stalled => "Stalled",
            State::Unknown => "Unknown",
        }
    }
}

/// An object's state, the reason and message behind it, and the fields it
/// uses that this version of Mahler does not implement yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub name: String,
    pub state: State,
    pub reason: String,
    pub message: String,
    pub not_implemented: Option<String>,
    /// Service only: its URL, image and replicas (available / desired).
    pub url: Option<String>,
    pub image: Option<String>,
    pub replicas: Option<(i32, i32)>,
    /// Template Services: the plan id and phase.
    pub plan: Option<(String, String)>,
}

impl Summary {
    /// From any object's conditions. A condition older than the object's
    /// generation does not count: the operator has not seen the change yet.
    pub fn of<K: Resource>(obj: &K, conditions: &[Condition]) -> Self {
        let generation = obj.meta().generation;
        let current = |c: &&Condition| generation.is_none() || c.observed_generation == generation;
        let ready = conditions.iter().filter(current).find(|c| c.type_ == READY);
        let stalled = conditions
            .iter()
            .filter(current)
            .any(|c| c.type_ == STALLED && c.status == "True");
        let state = match ready {
            None => State::Unknown,
            Some(c) if c.status == "True" => State::Ready,
            Some(_) if stalled => State::Stalled,
            Some(_) => State::Progressing,
        };
        Summary {
            name: obj.name_any(),
            state,
            reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
            message: ready.map(|c| c.message.clone()).unwrap_or_default(),
            not_implemented: conditions
                .iter()
                .find(|c| c.type_ == NOT_IMPLEMENTED && c.status == "True")
                .map(|c| c.message.clone()),
            url: None,
            image: None,
            replicas: None,
            plan: None,
        }
    }

    /// A Service's summary, with its URL, image, replicas and plan.
    pub fn of_service(svc: &Service) -> Self {
        let status = svc.status.as_ref();
        let mut s = Summary::of(
            svc,
            status.map(|s| s.conditions.as_slice()).unwrap_or_default(),
        );
        if let Some(st) = status {
            s.url = st.url.clone();
            s.image = st.image.clone();
            s.replicas = st
                .replicas
                .map(|desired| (st.available_replicas.unwrap_or(0), desired));
            s.plan = st
                .terraform
                .as_ref()
                .and_then(|tf| tf.plan.as_ref())
                .map(|p| (p.id.clone(), p.phase.to_string()));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mahler_api::{ConditionSet, Health, ServiceSpec, ServiceStatus};

    fn service(generation: i64, health: &Health, observed: i64) -> Service {
        let mut svc = Service::new("api", ServiceSpec::default());
        svc.metadata.generation = Some(generation);
        let mut set = ConditionSet::default();
        set.apply(health, Some(observed));
        svc.status = Some(ServiceStatus {
            conditions: set.into_vec(),
            url: Some("http://api.shop.svc:8080".into()),
            replicas: Some(2),
            available_replicas: Some(1),
            ..Default::default()
        });
        svc
    }

    #[test]
    fn states_follow_the_conditions_of_the_current_generation() {
        let ready = Summary::of_service(&service(3, &Health::ready("2/2"), 3));
        assert_eq!((ready.state, ready.replicas), (State::Ready, Some((1, 2))));
        let stalled = Summary::of_service(&service(
            3,
            &Health::stalled("TargetNotFound", "spec.to: no db"),
            3,
        ));
        assert_eq!(
            (
                stalled.state,
                stalled.reason.as_str(),
                stalled.message.as_str()
            ),
            (State::Stalled, "TargetNotFound", "spec.to: no db")
        );
        let rolling =
            Summary::of_service(&service(3, &Health::progressing("RollingOut", "1/2"), 3));
        assert_eq!(rolling.state, State::Progressing);
        // Ready for generation 2, but the spec is at 3: not known yet.
        let stale = Summary::of_service(&service(3, &Health::ready("2/2"), 2));
        assert_eq!(stale.state, State::Unknown);
    }
}
