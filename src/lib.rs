//! `mahler-operator`: the process around Mahler's controllers. Flags,
//! logging, the HTTP endpoints, waiting for the CRDs, leader election, the
//! Terraform engine's start-up, graceful shutdown ([`operator`]).
//!
//! The parts live in `crates/` (see docs/architecture.md):
//! `mahler-api` (what users write) ← `mahler-core` (pure logic) ←
//! `mahler-engine` (OpenTofu) ← `mahler-controller` (the reconcilers) ←
//! this package; `mahler-client` serves the CLI, the REST server and the
//! Terraform provider, which never compile the engine or the reconcilers.

pub mod operator;
