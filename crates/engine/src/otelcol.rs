//! Running `otelcol validate` on a rendered collector config, the way the
//! engine runs `tofu`: a child process with a deadline, its output kept for
//! the condition. A config the collector rejects never reaches a ConfigMap.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::Semaphore;

use mahler_core::truncate;

/// How long one validation may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// Why a config was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The collector ran and rejected it: its message.
    #[error("{0}")]
    Rejected(String),
    /// The collector could not be run (missing binary, timeout, I/O).
    #[error("could not run {binary}: {why}")]
    Unavailable { binary: String, why: String },
}

/// Runs the collector binary's `validate`, a few at a time.
pub struct Validator {
    binary: PathBuf,
    dir: PathBuf,
    permits: Semaphore,
}

impl Validator {
    /// `binary`: the collector (`otelcol`, on PATH or a path); `dir`: where
    /// configs are written for it (one file per run, removed after).
    pub fn new(binary: PathBuf, dir: PathBuf) -> Self {
        Validator {
            binary,
            dir,
            permits: Semaphore::new(4),
        }
    }

    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// `Ok(elapsed)` when the collector accepts `config` (YAML).
    pub async fn validate(&self, config: &str) -> Result<Duration, ValidateError> {
        let unavailable = |why: String| ValidateError::Unavailable {
            binary: self.binary.display().to_string(),
            why,
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let started = Instant::now();
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| unavailable(format!("{}: {e}", self.dir.display())))?;
        let file = tempfile::Builder::new()
            .prefix("otelcol-")
            .suffix(".yaml")
            .tempfile_in(&self.dir)
            .map_err(|e| unavailable(e.to_string()))?;
        tokio::fs::write(file.path(), config)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut cmd = Command::new(&self.binary);
        cmd.arg("validate")
            .arg(format!("--config=file:{}", file.path().display()))
            // Header values come from Secrets at run time; validation needs
            // only their shape, never the operator's environment.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|e| unavailable(e.to_string()))?;
        let output = tokio::time::timeout(DEADLINE, child.wait_with_output())
            .await
            .map_err(|_| unavailable(format!("validate took over {}s", DEADLINE.as_secs())))?
            .map_err(|e| unavailable(e.to_string()))?;
        if output.status.success() {
            return Ok(started.elapsed());
        }
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        Err(ValidateError::Rejected(truncate(&rejection(&text), 1024)))
    }
}

/// The collector's error without its boilerplate, on one line.
fn rejection(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("Flags:"))
        .map(|l| l.strip_prefix("Error: ").unwrap_or(l))
        .collect();
    lines.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rejection_is_one_line_without_boilerplate() {
        let text = "Error: failed to get config: cannot unmarshal\n\n'otlpexporter.Config' has invalid keys: endpointz\n";
        assert_eq!(
            super::rejection(text),
            "failed to get config: cannot unmarshal 'otlpexporter.Config' has invalid keys: endpointz"
        );
    }
}
