//! Mahler's pure logic: what each kind should produce, and what a template
//! Service should do next. No Kubernetes client and no async runtime (`make
//! lint` checks it), so everything here is unit-tested without a cluster.
//!
//! - [`environment`], [`workload`]: the Kubernetes objects an Environment,
//!   a Service and a Connection become, and the rollout they report.
//! - [`access`]: the RBAC objects Project members and Environment owners
//!   become.
//! - [`digest`]: whether an observed object already is what would be applied.
//! - [`terraform`]: workspaces (render, hash, input validation), the
//!   OpenTofu `-json` stream, state-lock verdicts, plans and outputs, the job
//!   vocabulary the engine runs, and [`terraform::decide`], the template
//!   Service state machine.
//! - [`telemetry`]: an Environment's OpenTelemetry collector (config,
//!   objects) and the `OTEL_*` variables of its Services.

pub mod access;
pub mod consul;
pub mod digest;
pub mod environment;
pub mod log_agent;
pub mod telemetry;
pub mod terraform;
pub mod unsupported;
pub mod workload;

/// `s` cut to at most `max` bytes on a character boundary, marked with `…`
/// when cut: for messages bound for status, Events and logs.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #[test]
    fn truncate_cuts_on_a_character_boundary() {
        assert_eq!(super::truncate("short", 10), "short");
        assert_eq!(super::truncate("ab€cd", 3), "ab…");
    }
}
