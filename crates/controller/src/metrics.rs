//! The operator's own Prometheus metrics, served on `/metrics`.
//!
//! Owns the registry and the metric families; knows nothing of Kubernetes.
//! The engine reports through [`mahler_engine::RunObserver`].

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub kind: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Kind of the object written (Deployment, Service status, Event, ...).
    pub kind: String,
    /// apply | apply_status | delete | finalizer | event
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    /// Apply | Plan | DriftCheck | Destroy
    pub operation: String,
    /// Applied | Planned | InSync | Destroyed | LockHeld | Failed ...
    pub result: String,
}

pub struct Metrics {
    pub registry: Registry,
    tofu_runs: Family<RunLabels, Counter>,
    tofu_run_seconds: Histogram,
    /// `tofu` processes started (init, plan, apply, show, output, ...).
    pub tofu_processes: Counter,
    reconciles: Family<ResultLabels, Counter>,
    /// Reconcile requests held by a failing object's backoff (no pass ran).
    deferred: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabels, Histogram>,
    writes: Family<WriteLabels, Counter>,
    pub leader: Gauge,
    consul_syncs: Family<SyncLabels, Counter>,
    consul_sync_seconds: Histogram,
    /// HTTP calls to Consul that write (txn, config entries).
    pub consul_writes: Counter,
    /// Catalog instances Mahler keeps registered.
    pub consul_instances: Gauge,
    /// `otelcol validate` runs by result (accepted, rejected, unavailable).
    telemetry_validations: Family<SyncLabels, Counter>,
    telemetry_validate_seconds: Histogram,
    /// Environments whose pod logs the node agent reads.
    pub log_agent_sources: Gauge,
    /// Reconcile passes running now, by kind (at `--concurrency`, further
    /// work waits in the controller's queue).
    in_flight: Family<KindLabels, Gauge>,
    /// Terraform engine jobs waiting for a run slot.
    tofu_jobs_waiting: Gauge,
}

/// Counts a pass as in flight until dropped (also when the pass panics).
pub struct InFlight(Gauge);

/// How a reconcile pass ended: the `result` label of `mahler_reconciles_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
    /// The object's own write met a `404`: it was deleted meanwhile.
    Gone,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Gone => "gone",
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    /// ok, or the failure's reason (ConsulUnavailable, ConsulTokenRejected...)
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mahler");
        let reconciles = Family::<ResultLabels, Counter>::default();
        let deferred = Family::<KindLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        let tofu_runs = Family::<RunLabels, Counter>::default();
        let tofu_run_seconds = Histogram::new(exponential_buckets(0.25, 2.0, 12));
        let tofu_processes = Counter::default();
        registry.register(
            "tofu_runs",
            "Terraform engine jobs by operation and outcome",
            tofu_runs.clone(),
        );
        registry.register(
            "tofu_run_seconds",
            "Duration of one Terraform engine job (all its tofu commands)",
            tofu_run_seconds.clone(),
        );
        registry.register(
            "tofu_processes",
            "tofu processes started",
            tofu_processes.clone(),
        );
        registry.register(
            "reconciles",
            "Reconcile passes by kind and result (ok, error, gone: deleted while reconciling)",
            reconciles.clone(),
        );
        registry.register(
            "reconciles_deferred",
            "Reconcile requests for a failing object held until its backoff elapsed (no pass ran)",
            deferred.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by kind and reason",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile pass",
            durations.clone(),
        );
        registry.register(
            "kube_writes",
            "Writes the operator sent to the Kubernetes API, by object kind and verb",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        let consul_syncs = Family::<SyncLabels, Counter>::default();
        let consul_sync_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let consul_writes = Counter::default();
        let consul_instances = Gauge::default();
        registry.register(
            "consul_syncs",
            "Consul syncs by result (ok or the failure's reason)",
            consul_syncs.clone(),
        );
        registry.register(
            "consul_sync_seconds",
            "Time one Consul sync took (reads, diff, writes)",
            consul_sync_seconds.clone(),
        );
        registry.register(
            "consul_writes",
            "HTTP calls to Consul that write (txn batches, config entries)",
            consul_writes.clone(),
        );
        registry.register(
            "consul_instances",
            "Catalog instances Mahler keeps registered",
            consul_instances.clone(),
        );
        let telemetry_validations = Family::<SyncLabels, Counter>::default();
        let telemetry_validate_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "telemetry_validations",
            "otelcol validate runs on rendered collector configs, by result (accepted, rejected, unavailable)",
            telemetry_validations.clone(),
        );
        registry.register(
            "telemetry_validate_seconds",
            "Time one accepted otelcol validate took",
            telemetry_validate_seconds.clone(),
        );
        let log_agent_sources = Gauge::default();
        registry.register(
            "log_agent_environments",
            "Environments whose pod logs the node agent reads",
            log_agent_sources.clone(),
        );
        let in_flight = Family::<KindLabels, Gauge>::default();
        registry.register(
            "reconciles_in_flight",
            "Reconcile passes running now, by kind (at --concurrency, further work queues)",
            in_flight.clone(),
        );
        let tofu_jobs_waiting = Gauge::default();
        registry.register(
            "tofu_jobs_waiting",
            "Terraform engine jobs and template validations waiting for a run slot (--tofu-parallelism)",
            tofu_jobs_waiting.clone(),
        );
        Metrics {
            in_flight,
            tofu_jobs_waiting,
            log_agent_sources,
            telemetry_validations,
            telemetry_validate_seconds,
            consul_syncs,
            consul_sync_seconds,
            consul_writes,
            consul_instances,
            registry,
            tofu_runs,
            tofu_run_seconds,
            tofu_processes,
            reconciles,
            deferred,
            errors,
            durations,
            writes,
            leader,
        }
    }
}

impl Metrics {
    /// A pass of `kind` starts; it ends when the guard is dropped.
    pub fn in_flight(&self, kind: &str) -> InFlight {
        let g = self
            .in_flight
            .get_or_create(&KindLabels { kind: kind.into() })
            .clone();
        g.inc();
        InFlight(g)
    }

    /// A pass ran to `outcome`.
    pub fn reconciled(&self, kind: &str, elapsed: Duration, outcome: Outcome) {
        self.reconciles
            .get_or_create(&ResultLabels {
                kind: kind.into(),
                result: outcome.label().into(),
            })
            .inc();
        self.durations
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(elapsed.as_secs_f64());
    }

    /// A reconcile request for a failing object arrived inside its backoff
    /// and was held for the rest of it (no pass ran).
    pub fn deferred(&self, kind: &str) {
        self.deferred
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn failed(&self, kind: &str, reason: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub fn wrote(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    pub fn telemetry_validated(&self, result: &str, elapsed: Duration) {
        self.telemetry_validations
            .get_or_create(&SyncLabels {
                result: result.into(),
            })
            .inc();
        if result == "accepted" {
            self.telemetry_validate_seconds
                .observe(elapsed.as_secs_f64());
        }
    }

    pub fn consul_synced(&self, result: &str, elapsed: Duration, writes: u64) {
        self.consul_syncs
            .get_or_create(&SyncLabels {
                result: result.into(),
            })
            .inc();
        self.consul_sync_seconds.observe(elapsed.as_secs_f64());
        self.consul_writes.inc_by(writes);
    }

    pub fn tofu_run(&self, operation: &str, result: &str, elapsed: Duration) {
        self.tofu_runs
            .get_or_create(&RunLabels {
                operation: operation.into(),
                result: result.into(),
            })
            .inc();
        self.tofu_run_seconds.observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// The Terraform engine reports its runs here.
impl mahler_engine::RunObserver for Metrics {
    fn process_started(&self) {
        self.tofu_processes.inc();
    }
    fn run_finished(
        &self,
        operation: mahler_api::terraform::Operation,
        outcome: &str,
        duration: Duration,
    ) {
        self.tofu_run(operation.as_str(), outcome, duration);
    }
    fn slot_wait(&self, waiting: bool) {
        if waiting {
            self.tofu_jobs_waiting.inc();
        } else {
            self.tofu_jobs_waiting.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_up_in_the_exposition() {
        let m = Metrics::default();
        m.reconciled("Service", Duration::from_millis(3), Outcome::Ok);
        m.failed("Service", "kube_api");
        m.wrote("Deployment", "apply");
        let text = m.encode();
        assert!(
            text.contains(r#"mahler_reconciles_total{kind="Service",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mahler_reconcile_errors_total{kind="Service",reason="kube_api"} 1"#)
        );
        assert!(text.contains(r#"mahler_kube_writes_total{kind="Deployment",verb="apply"} 1"#));
    }
}
