//! The `mahler` command line (installed also as `kubectl-mahler`, so
//! `kubectl mahler ...` works). It talks to the Kubernetes API with the
//! user's kubeconfig through `mahler-client`; it never compiles the engine
//! or the reconcilers (`make lint` checks it).
//!
//! - [`args`]: every command and flag (clap).
//! - [`settings`]: Mahler contexts and the precedence of settings.
//! - [`cluster`]: the client, and the lookups with "did you mean".
//! - [`commands`]: one module per command group.
//! - [`render`]: what read commands print (pure, snapshot tested).
//! - [`progress`]: `--wait` with live progress.
//! - [`error`]: one-line errors and the documented exit codes.

pub mod args;
pub mod cluster;
pub mod commands;
pub mod error;
pub mod output;
pub mod progress;
pub mod render;
pub mod settings;
pub mod suggest;

use std::process::ExitCode;

use clap::Parser;

use crate::args::Cli;
use crate::error::{CliError, Exit};

/// Runs the command line and returns the exit code (docs/cli.md).
pub fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or(info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown");
        // `mahler ... | head`: the reader left; that is not an error.
        if payload.contains("Broken pipe") {
            std::process::exit(0);
        }
        let payload = payload.lines().next().unwrap_or_default();
        eprintln!(
            "error: internal error in mahler ({payload}); please report it with the command you ran"
        );
        std::process::exit(Exit::Failure as i32);
    }));
    // Invoked as `kubectl mahler`, argv[0] is kubectl-mahler: clap names the
    // binary from it in usage lines, which reads right either way.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(Exit::Usage as u8),
            };
        }
    };
    let _ = COLOR.set(cli.global.color);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return report(&CliError::failure(format!("cannot start: {e}"))),
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

/// `--color` of this invocation, for the error lines.
static COLOR: std::sync::OnceLock<args::ColorChoice> = std::sync::OnceLock::new();

fn report(e: &CliError) -> ExitCode {
    use std::io::IsTerminal;
    let color = match COLOR.get().copied().unwrap_or_default() {
        args::ColorChoice::Always => true,
        args::ColorChoice::Never => false,
        args::ColorChoice::Auto => {
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        }
    };
    let (red, bold) = (
        anstyle::AnsiColor::Red.on_default().bold(),
        anstyle::Style::new().bold(),
    );
    if color {
        eprintln!("{red}error:{red:#} {}", e.message);
    } else {
        eprintln!("error: {}", e.message);
    }
    if let Some(hint) = &e.hint {
        if color {
            eprintln!("{bold}hint:{bold:#} {hint}");
        } else {
            eprintln!("hint: {hint}");
        }
    }
    e.code()
}
