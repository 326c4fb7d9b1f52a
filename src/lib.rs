//! Mahler: a Kubernetes operator that turns Project, Environment, Service and
//! Connection manifests into running, connected workloads.
//!
//! The crate is laid out so one manifest can be followed end to end:
//! - [`crd`]: what users write (types, schemas, CEL rules, conditions). No client calls.
//! - [`environment`], [`workload`]: pure builders of the Kubernetes objects each
//!   kind should produce. No client calls; unit-tested without a cluster.
//! - [`controller`]: where the cluster is touched: one reconciler per kind plus the
//!   single apply helper, status helper and the shared object caches.
//! - [`terraform`]: the Terraform engine: workspaces, OpenTofu runs, state locks.
//! - [`operator`]: process wiring: leader election, HTTP endpoints, shutdown.

pub mod controller;
pub mod crd;
pub mod environment;
pub mod metrics;
pub mod operator;
pub mod terraform;
pub mod workload;

/// The label every object Mahler creates carries (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "mahler");
/// Server-side apply field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "mahler-operator";
