//! Helpers the cluster benchmarks share (each bench includes this module).
#![allow(dead_code)]

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted durations, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The operator's `/metrics` at `url` (empty when it does not answer).
pub async fn metrics(url: &str) -> String {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", url])
        .output()
        .await
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The sum of every sample whose line starts with `prefix`.
pub fn sum(body: &str, prefix: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
