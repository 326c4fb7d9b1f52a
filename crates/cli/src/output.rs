//! Printing: tables sized to the terminal, JSON, YAML and kubectl-style
//! names, and colour only where it is wanted.

use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use crate::args::{ColorChoice, Output};
use crate::error::{CliError, Result};

/// How to print: the format and whether colour is on.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    pub format: Output,
    pub color: bool,
    /// Terminal width when stdout is one.
    pub width: Option<u16>,
}

impl Printer {
    pub fn new(format: Output, choice: ColorChoice) -> Self {
        let tty = std::io::stdout().is_terminal();
        let color = match choice {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
            }
        };
        let width = tty.then(|| comfy_table::Table::new().width()).flatten();
        Printer {
            format,
            color,
            width,
        }
    }

    /// Refuses formats a command does not print (dot and mermaid outside graph).
    pub fn only(&self, allowed: &[Output], command: &str) -> Result<()> {
        if allowed.contains(&self.format) {
            Ok(())
        } else {
            let names: Vec<&str> = allowed.iter().map(|o| o.as_str()).collect();
            Err(CliError::usage(format!(
                "-o {}: `{command}` prints {}",
                self.format.as_str(),
                names.join(", ")
            )))
        }
    }

    pub fn paint(&self, style: Style, text: &str) -> String {
        if self.color && !text.is_empty() {
            format!("{style}{text}{style:#}")
        } else {
            text.to_string()
        }
    }

    pub fn green(&self, text: &str) -> String {
        self.paint(AnsiColor::Green.on_default(), text)
    }
    pub fn red(&self, text: &str) -> String {
        self.paint(AnsiColor::Red.on_default(), text)
    }
    pub fn yellow(&self, text: &str) -> String {
        self.paint(AnsiColor::Yellow.on_default(), text)
    }
    pub fn bold(&self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }
    pub fn dim(&self, text: &str) -> String {
        self.paint(Style::new().dimmed(), text)
    }

    /// A state word coloured by meaning (Ready green, Stalled red, else yellow).
    pub fn state(&self, state: mahler_client::summary::State) -> String {
        use mahler_client::summary::State;
        match state {
            State::Ready => self.green("Ready"),
            State::Progressing => self.yellow("Progressing"),
            State::Stalled => self.red("Stalled"),
            State::Unknown => self.dim("Unknown"),
        }
    }

    /// A kubectl-like table: no borders, upper-case headers, wrapped to the
    /// terminal's width when printing to one.
    pub fn table(&self, headers: &[&str], rows: Vec<Vec<String>>) -> String {
        render_table(headers, rows, self.width)
    }
}

pub fn render_table(headers: &[&str], rows: Vec<Vec<String>>, width: Option<u16>) -> String {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    match width {
        Some(w) => {
            table.set_width(w);
            table.set_content_arrangement(ContentArrangement::Dynamic);
        }
        None => {
            table.set_content_arrangement(ContentArrangement::Disabled);
        }
    }
    table.set_header(headers.iter().map(|h| h.to_uppercase()));
    for row in rows {
        table.add_row(row);
    }
    // comfy-table pads each cell with one space on both sides; kubectl's
    // tables start at the margin.
    let text = table.to_string();
    let mut out = String::new();
    for line in text.lines() {
        out.push_str(line.strip_prefix(' ').unwrap_or(line).trim_end());
        out.push('\n');
    }
    out
}

/// JSON or YAML of any serialisable value.
pub fn structured<T: Serialize>(format: Output, value: &T) -> Result<String> {
    match format {
        Output::Json => Ok(serde_json::to_string_pretty(value).expect("serialises") + "\n"),
        Output::Yaml => Ok(serde_yaml::to_string(value).expect("serialises")),
        other => Err(CliError::usage(format!(
            "-o {}: not a structured format",
            other.as_str()
        ))),
    }
}

/// A Kubernetes-style list (`kind: List`, `items`).
pub fn list<T: Serialize>(items: &[T]) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// How long ago a timestamp was, as kubectl prints it (5s, 3m, 2h, 4d).
pub fn age(time: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    let Some(t) = time else {
        return "<unknown>".into();
    };
    let now = jiff::Timestamp::now();
    let secs = now.duration_since(t.0).as_secs().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_start_at_the_margin_and_have_no_borders() {
        let t = render_table(
            &["name", "ready"],
            vec![
                vec!["api".into(), "True".into()],
                vec!["db".into(), "False".into()],
            ],
            None,
        );
        assert_eq!(t, "NAME  READY\napi   True\ndb    False\n");
    }

    #[test]
    fn tables_wrap_to_the_terminal() {
        let long = "x".repeat(80);
        let t = render_table(
            &["name", "message"],
            vec![vec!["api".into(), long]],
            Some(40),
        );
        assert!(t.lines().all(|l| l.chars().count() <= 40), "{t}");
    }
}
