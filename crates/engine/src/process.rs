//! Running the `tofu` binary: one child process per command, its `-json`
//! output parsed when it ends, a bounded tail of its output kept for error
//! messages, and a deadline / cancellation that interrupts it the way a
//! person would (SIGINT: OpenTofu stops after in-flight operations, writes
//! its state and releases the lock), then kills it if it will not stop.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use mahler_core::terraform::stream::Stream;
use mahler_core::truncate;

/// Lines of output kept per run for error messages.
const TAIL_LINES: usize = 60;
/// How long an interrupted run gets to finish writing state.
const GRACE: Duration = Duration::from_secs(30);

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    TimedOut,
    Cancelled,
}

#[derive(Debug)]
pub struct Output {
    pub exit: Exit,
    pub stream: Stream,
    /// The last lines of stdout and stderr (not JSON UI lines).
    pub tail: String,
    /// Raw stdout, when asked for (`tofu output -json`, `show -json`).
    pub stdout: Option<String>,
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        match self.exit {
            Exit::Code(c) => Some(c),
            _ => None,
        }
    }

    /// The most useful error text: diagnostics, else the output tail.
    pub fn error_text(&self) -> String {
        let errors = self.stream.errors();
        let text = if errors.is_empty() {
            self.tail.trim().to_string()
        } else {
            errors
        };
        truncate(&text, 2048)
    }
}

/// One command invocation.
pub struct Invocation<'a> {
    pub tofu: &'a Path,
    pub dir: &'a Path,
    pub args: Vec<String>,
    pub env: &'a BTreeMap<String, String>,
    pub keep_stdout: bool,
}

#[tracing::instrument(name = "tofu", skip_all, fields(command = %inv.args.first().map(String::as_str).unwrap_or("tofu")))]
pub async fn run(
    inv: Invocation<'_>,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> std::io::Result<Output> {
    // Output goes to files in the workspace, not pipes: if the operator dies
    // mid-apply, OpenTofu must not die of a broken pipe before it has
    // written its state; it finishes, releases its lock, and the next
    // operator finds the result.
    let name = inv.args.first().map(String::as_str).unwrap_or("tofu");
    let out_path = inv.dir.join(format!(".mahler-{name}.stdout"));
    let err_path = inv.dir.join(format!(".mahler-{name}.stderr"));
    let mut cmd = Command::new(inv.tofu);
    cmd.args(&inv.args)
        .current_dir(inv.dir)
        .envs(inv.env)
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?);
    let started = std::time::Instant::now();
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));

    let mut exit = None;
    let status = tokio::select! {
        status = child.wait() => Some(status?),
        _ = tokio::time::sleep_until(deadline) => { exit = Some(Exit::TimedOut); None }
        _ = cancel.cancelled() => { exit = Some(Exit::Cancelled); None }
    };
    let status = match status {
        Some(s) => Some(s),
        None => {
            if let Some(pid) = pid {
                // Ignore errors: the process may have just exited.
                let _ = kill(pid, Signal::SIGINT);
            }
            match tokio::time::timeout(GRACE, child.wait()).await {
                Ok(s) => s.ok(),
                Err(_) => {
                    let _ = child.kill().await;
                    None
                }
            }
        }
    };
    let exit = match (exit, status) {
        (Some(e), _) => e,
        (None, Some(s)) => Exit::Code(s.code().unwrap_or(-1)),
        (None, None) => Exit::Code(-1),
    };
    tracing::debug!(command = ?inv.args, ?exit, ms = started.elapsed().as_millis() as u64, "tofu");

    let mut stream = Stream::default();
    let mut tail = VecDeque::new();
    let mut raw = inv.keep_stdout.then(String::new);
    let mut lines = BufReader::new(tokio::fs::File::open(&out_path).await?).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(raw) = raw.as_mut() {
            raw.push_str(&line);
            raw.push('\n');
        } else if line.starts_with('{') {
            stream.push(&line);
        } else {
            push_tail(&mut tail, line);
        }
    }
    let mut lines = BufReader::new(tokio::fs::File::open(&err_path).await?).lines();
    while let Some(line) = lines.next_line().await? {
        push_tail(&mut tail, line);
    }
    let tail = tail
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Output {
        exit,
        stream,
        tail,
        stdout: raw,
    })
}

fn push_tail(tail: &mut VecDeque<String>, line: String) {
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(truncate(&line, 512));
}

/// Whether any process on this host runs with `dir` as its working
/// directory (a `tofu` run that survived its operator).
pub fn runs_in(dir: &Path) -> bool {
    let Ok(canonical) = dir.canonicalize() else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
            && std::fs::read_link(e.path().join("cwd")).is_ok_and(|cwd| cwd == canonical)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> (std::path::PathBuf, Vec<String>) {
        ("/bin/sh".into(), vec!["-c".to_string(), script.to_string()])
    }

    #[tokio::test]
    async fn a_run_past_its_deadline_is_interrupted_and_may_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        // Like OpenTofu: on SIGINT it finishes what it is doing, then exits.
        let (bin, args) = sh("trap 'echo cleaned up; exit 3' INT; echo started; sleep 5 & wait");
        let env = BTreeMap::new();
        let started = std::time::Instant::now();
        let out = run(
            Invocation {
                tofu: &bin,
                dir: dir.path(),
                args,
                env: &env,
                keep_stdout: false,
            },
            tokio::time::Instant::now() + Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.exit, Exit::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "not interrupted"
        );
        assert!(
            out.tail.contains("started") && out.tail.contains("cleaned up"),
            "{}",
            out.tail
        );
    }

    #[tokio::test]
    async fn cancellation_interrupts_and_json_lines_are_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, args) = sh(
            r#"echo '{"type":"planned_change","change":{"resource":{"addr":"a.b"},"action":"create"}}'; sleep 5 & wait"#,
        );
        let env = BTreeMap::new();
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let out = run(
            Invocation {
                tofu: &bin,
                dir: dir.path(),
                args,
                env: &env,
                keep_stdout: false,
            },
            tokio::time::Instant::now() + Duration::from_secs(30),
            &cancel,
        )
        .await
        .unwrap();
        assert_eq!(out.exit, Exit::Cancelled);
        assert_eq!(out.stream.changes[0].address, "a.b");
    }

    #[tokio::test]
    async fn exit_codes_and_bounded_tails() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, args) =
            sh("i=0; while [ $i -lt 500 ]; do echo line $i; i=$((i+1)); done; exit 2");
        let env = BTreeMap::new();
        let out = run(
            Invocation {
                tofu: &bin,
                dir: dir.path(),
                args,
                env: &env,
                keep_stdout: false,
            },
            tokio::time::Instant::now() + Duration::from_secs(30),
            &CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.code(), Some(2));
        assert_eq!(out.tail.lines().count(), TAIL_LINES);
        assert!(out.tail.ends_with("line 499"));
    }
}
