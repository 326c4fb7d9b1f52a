//! OpenTofu's machine-readable UI (`-json`): one JSON object per line. This
//! turns the lines into what status and Events show: the planned changes,
//! the change summary, drift, and diagnostics with their file and line.

use serde::Deserialize;

use mahler_api::PlannedResource;

/// What one `plan` / `apply` / `destroy` run reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    /// `planned_change` messages, in order.
    pub changes: Vec<PlannedResource>,
    /// `resource_drift` messages: objects that changed outside OpenTofu.
    pub drift: Vec<PlannedResource>,
    /// The last `change_summary`: (add, change, destroy).
    pub summary: Option<(i32, i32, i32)>,
    pub diagnostics: Vec<Diagnostic>,
    /// Resources whose apply failed (`apply_errored`).
    pub errored: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub error: bool,
    pub summary: String,
    pub detail: String,
    /// `file:line`, when the diagnostic points into the module.
    pub at: Option<String>,
    pub address: Option<String>,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        if let Some(address) = &self.address {
            write!(f, "{address}: ")?;
        }
        write!(f, "{}", self.summary)?;
        if !self.detail.is_empty() {
            // Details can be long and multi-line; the first line says enough.
            let first = self.detail.lines().find(|l| !l.trim().is_empty());
            if let Some(line) = first {
                write!(f, " ({})", line.trim())?;
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    change: Option<Change>,
    #[serde(default)]
    changes: Option<Summary>,
    #[serde(default)]
    diagnostic: Option<RawDiagnostic>,
    #[serde(default)]
    hook: Option<Hook>,
}

#[derive(Deserialize)]
struct Change {
    resource: Resource,
    action: String,
}

#[derive(Deserialize)]
struct Resource {
    addr: String,
}

#[derive(Deserialize)]
struct Hook {
    resource: Resource,
}

#[derive(Deserialize)]
struct Summary {
    #[serde(default)]
    add: i32,
    #[serde(default)]
    change: i32,
    #[serde(default)]
    remove: i32,
}

#[derive(Deserialize)]
struct RawDiagnostic {
    severity: String,
    #[serde(default)]
    summary: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    range: Option<Range>,
}

#[derive(Deserialize)]
struct Range {
    filename: String,
    start: Position,
}

#[derive(Deserialize)]
struct Position {
    line: u32,
}

impl Stream {
    /// Feeds one line of output; lines that are not UI messages are ignored.
    pub fn push(&mut self, line: &str) {
        let Ok(msg) = serde_json::from_str::<Line>(line) else {
            return;
        };
        let kind = msg.kind.clone();
        match (kind.as_str(), msg) {
            (
                "planned_change",
                Line {
                    change: Some(c), ..
                },
            ) => self.changes.push(PlannedResource {
                address: c.resource.addr,
                action: c.action,
            }),
            (
                "resource_drift",
                Line {
                    change: Some(c), ..
                },
            ) => self.drift.push(PlannedResource {
                address: c.resource.addr,
                action: c.action,
            }),
            (
                "change_summary",
                Line {
                    changes: Some(s), ..
                },
            ) => self.summary = Some((s.add, s.change, s.remove)),
            ("apply_errored", Line { hook: Some(h), .. }) => self.errored.push(h.resource.addr),
            (
                "diagnostic",
                Line {
                    diagnostic: Some(d),
                    ..
                },
            ) => self.diagnostics.push(Diagnostic {
                error: d.severity == "error",
                summary: d.summary,
                detail: d.detail,
                at: d.range.map(|r| format!("{}:{}", r.filename, r.start.line)),
                address: d.address,
            }),
            _ => {}
        }
    }

    /// The errors, one per line, for a condition message.
    pub fn errors(&self) -> String {
        self.diagnostics
            .iter()
            .filter(|d| d.error)
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// (add, change, destroy), from the summary or counted from the changes.
    pub fn counts(&self) -> (i32, i32, i32) {
        if let Some(s) = self.summary {
            return s;
        }
        let mut counts = (0, 0, 0);
        for c in &self.changes {
            match c.action.as_str() {
                "create" => counts.0 += 1,
                "update" => counts.1 += 1,
                "delete" => counts.2 += 1,
                "replace" => {
                    counts.0 += 1;
                    counts.2 += 1
                }
                _ => {}
            }
        }
        counts
    }
}

/// Errors from `tofu validate -json`, which prints one JSON document
/// (`{"valid": false, "diagnostics": [...]}`) rather than a stream.
pub fn validate_errors(document: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Validate {
        valid: bool,
        #[serde(default)]
        diagnostics: Vec<RawDiagnostic>,
    }
    let v: Validate = serde_json::from_str(document).ok()?;
    if v.valid {
        return None;
    }
    let mut s = Stream::default();
    for d in v.diagnostics {
        s.diagnostics.push(Diagnostic {
            error: d.severity == "error",
            summary: d.summary,
            detail: d.detail,
            at: d.range.map(|r| format!("{}:{}", r.filename, r.start.line)),
            address: d.address,
        });
    }
    Some(s.errors())
}

#[cfg(test)]
mod tests {
    #[test]
    fn validate_documents_list_their_errors() {
        let doc = r#"{"format_version":"1.0","valid":false,"error_count":1,"warning_count":0,"diagnostics":[{"severity":"error","summary":"Unsupported argument","detail":"An argument named \"lenght\" is not expected here.","range":{"filename":"main.tf","start":{"line":2,"column":3,"byte":38},"end":{"line":2,"column":9,"byte":44}}}]}"#;
        assert_eq!(
            super::validate_errors(doc).unwrap(),
            r#"main.tf:2: Unsupported argument (An argument named "lenght" is not expected here.)"#
        );
        assert_eq!(
            super::validate_errors(r#"{"valid":true,"diagnostics":[]}"#),
            None
        );
    }

    use super::*;

    #[test]
    fn parses_a_plan_stream() {
        let mut s = Stream::default();
        for line in [
            r#"{"@level":"info","@message":"OpenTofu 1.12.6","type":"version","tofu":"1.12.6","ui":"1.2"}"#,
            r#"{"@level":"info","@message":"kubernetes_config_map.c: Drift detected (delete)","type":"resource_drift","change":{"resource":{"addr":"kubernetes_config_map.c","resource_type":"kubernetes_config_map"},"action":"delete"}}"#,
            r#"{"@level":"info","@message":"random_password.p: Plan to create","type":"planned_change","change":{"resource":{"addr":"random_password.p"},"action":"create"}}"#,
            r#"{"@level":"info","@message":"Plan: 1 to add, 0 to change, 0 to destroy.","type":"change_summary","changes":{"add":1,"change":0,"import":0,"remove":0,"operation":"plan"}}"#,
            "not json at all",
        ] {
            s.push(line);
        }
        assert_eq!(
            s.changes,
            vec![PlannedResource {
                address: "random_password.p".into(),
                action: "create".into()
            }]
        );
        assert_eq!(s.drift[0].address, "kubernetes_config_map.c");
        assert_eq!(s.counts(), (1, 0, 0));
        assert!(s.errors().is_empty());
    }

    #[test]
    fn diagnostics_name_file_line_and_first_detail_line() {
        let mut s = Stream::default();
        s.push(
            r#"{"@level":"error","type":"diagnostic","diagnostic":{"severity":"error","summary":"Unsupported argument","detail":"\nAn argument named \"lenght\" is not expected here.\nMore.","range":{"filename":"main.tf","start":{"line":3,"column":3,"byte":40},"end":{"line":3,"column":9,"byte":46}}}}"#,
        );
        s.push(
            r#"{"@level":"warn","type":"diagnostic","diagnostic":{"severity":"warning","summary":"Deprecated","detail":""}}"#,
        );
        assert_eq!(
            s.errors(),
            r#"main.tf:3: Unsupported argument (An argument named "lenght" is not expected here.)"#
        );
    }

    #[test]
    fn counts_fall_back_to_the_changes() {
        let mut s = Stream::default();
        s.push(
            r#"{"type":"planned_change","change":{"resource":{"addr":"a.b"},"action":"replace"}}"#,
        );
        s.push(
            r#"{"type":"planned_change","change":{"resource":{"addr":"a.c"},"action":"update"}}"#,
        );
        assert_eq!(s.counts(), (1, 1, 1));
    }
}
