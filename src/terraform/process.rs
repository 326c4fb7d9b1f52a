//! Running the `tofu` binary: one child process per command, its `-json`
//! stdout parsed as it arrives, a bounded tail of its output kept for error
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

use super::stream::Stream;

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

pub async fn run(
    inv: Invocation<'_>,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> std::io::Result<Output> {
    let mut cmd = Command::new(inv.tofu);
    cmd.args(&inv.args)
        .current_dir(inv.dir)
        .envs(inv.env)
        .env("TF_IN_AUTOMATION", "1")
        .env("TF_INPUT", "0")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A dropped run (operator stopping) must not leave a process behind
        // holding the lock forever; the interrupt path below is the normal one.
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");

    let keep = inv.keep_stdout;
    let read_stdout = async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut stream = Stream::default();
        let mut tail = VecDeque::new();
        let mut raw = keep.then(String::new);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(raw) = raw.as_mut() {
                raw.push_str(&line);
                raw.push('\n');
                continue;
            }
            if line.starts_with('{') {
                stream.push(&line);
            } else {
                push_tail(&mut tail, line);
            }
        }
        (stream, tail, raw)
    };
    let read_stderr = async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail = VecDeque::new();
        while let Ok(Some(line)) = lines.next_line().await {
            push_tail(&mut tail, line);
        }
        tail
    };
    let readers = async { futures::join!(read_stdout, read_stderr) };
    tokio::pin!(readers);

    let mut exit = None;
    let status = tokio::select! {
        status = child.wait() => Some(status?),
        _ = tokio::time::sleep_until(deadline) => { exit = Some(Exit::TimedOut); None }
        _ = cancel.cancelled() => { exit = Some(Exit::Cancelled); None }
    };
    if status.is_none() {
        if let Some(pid) = pid {
            // Ignore errors: the process may have just exited.
            let _ = kill(pid, Signal::SIGINT);
        }
        if tokio::time::timeout(GRACE, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
    let ((stream, out_tail, raw), err_tail) = (&mut readers).await;
    let exit = match (exit, status) {
        (Some(e), _) => e,
        (None, Some(s)) => Exit::Code(s.code().unwrap_or(-1)),
        (None, None) => Exit::Code(-1),
    };
    let tail = out_tail
        .into_iter()
        .chain(err_tail)
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
