//! The Grafana dashboard (charts/mahler/dashboards/mahler.json,
//! docs/telemetry.md "Dashboard"):
//!
//! - it type-checks against Grafana's published schema types
//!   (`@grafana/schema`, pinned in tools/dashboard-check) with `tsc`: the
//!   dashboard as a `Dashboard`, each time series panel's options and field
//!   config as that panel plugin's `Options` and `FieldConfig`, so an unknown
//!   key or a wrong value fails;
//! - every metric its queries name exists: the operator's in its own
//!   registry, the span metrics in what a real collector (tools/otelcol)
//!   running a config Mahler renders serves on its Prometheus endpoint.
//!
//! Run by `make test` (hack/test.sh sets MAHLER_DASHBOARD_CHECK and
//! MAHLER_TOOLS_DIR).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn dashboard() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/mahler/dashboards/mahler.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn required(var: &str) -> PathBuf {
    PathBuf::from(
        std::env::var(var)
            .unwrap_or_else(|_| panic!("{var} is not set: run `make test` (hack/test.sh)")),
    )
}

/// Panels, rows' nested panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().unwrap() {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

fn queries(d: &Value) -> Vec<String> {
    panels(d)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .chain(
            d["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|v| v["type"] == "query")
                // `label_values(<series>, <label>)`: the series.
                .map(|v| {
                    let q = v["query"].as_str().unwrap();
                    let inner = q.strip_prefix("label_values(").unwrap_or(q);
                    inner.rsplit_once(',').map_or(inner, |(s, _)| s).to_string()
                }),
        )
        .collect()
}

/// The TypeScript that assigns the dashboard (and each panel's plugin
/// options) to Grafana's types. `Lit` turns the schema's string enums into
/// their string values, which is what JSON holds.
fn typescript(d: &Value) -> String {
    let mut ts = String::from(
        "import type { Dashboard } from '@grafana/schema';\n\
         import type { Options as TimeSeriesOptions, FieldConfig as TimeSeriesFieldConfig } from '@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen';\n\
         type Lit<T> = T extends string ? `${T}` : T extends number | boolean | null | undefined ? T\n\
           : T extends Array<infer U> ? Array<Lit<U>> : T extends object ? { [K in keyof T]: Lit<T[K]> } : T;\n",
    );
    ts.push_str(&format!("export const dashboard: Lit<Dashboard> = {d};\n"));
    for p in panels(d) {
        if p["type"] == "timeseries" {
            let id = &p["id"];
            ts.push_str(&format!(
                "export const options_{id}: Lit<TimeSeriesOptions> = {};\n",
                p["options"]
            ));
            ts.push_str(&format!(
                "export const custom_{id}: Lit<TimeSeriesFieldConfig> = {};\n",
                p["fieldConfig"]["defaults"]["custom"]
            ));
        }
    }
    ts
}

/// `tsc --noEmit` of `d`'s TypeScript: Ok, or the compiler's errors.
fn type_check(d: &Value) -> Result<(), String> {
    let tools = required("MAHLER_DASHBOARD_CHECK");
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(tools.join("node_modules"), dir.path().join("node_modules"))
        .unwrap();
    std::fs::write(dir.path().join("dashboard.ts"), typescript(d)).unwrap();
    std::fs::write(
        dir.path().join("tsconfig.json"),
        json!({"compilerOptions": {
            "strict": true, "noEmit": true, "module": "nodenext", "moduleResolution": "nodenext",
            "target": "es2022", "types": [], "skipLibCheck": true,
        }, "files": ["dashboard.ts"]})
        .to_string(),
    )
    .unwrap();
    let out = Command::new(tools.join("node_modules/.bin/tsc"))
        .args(["-p", "tsconfig.json"])
        .current_dir(dir.path())
        .output()
        .expect("run tsc");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn the_dashboard_type_checks_against_grafanas_schema() {
    type_check(&dashboard()).unwrap_or_else(|e| panic!("tsc: {e}"));
}

#[test]
fn the_schema_check_refuses_what_grafana_would_not_read() {
    // Proof that the check can fail: each change is one Grafana's types refuse.
    let mut unknown_key = dashboard();
    unknown_key["panles"] = json!([]);
    let mut wrong_type = dashboard();
    wrong_type["refresh"] = json!(30);
    let mut bad_legend = dashboard();
    bad_legend["panels"][1]["options"]["legend"]["displayMode"] = json!("grid");
    let mut missing_tooltip = dashboard();
    missing_tooltip["panels"][1]["options"]
        .as_object_mut()
        .unwrap()
        .remove("tooltip");
    for (what, d, says) in [
        ("an unknown key", unknown_key, "panles\"' does not exist"),
        (
            "a number for a string",
            wrong_type,
            "'number' is not assignable to type 'string'",
        ),
        ("an unknown legend mode", bad_legend, "\"grid\""),
        ("a missing required option", missing_tooltip, "tooltip"),
    ] {
        let err = type_check(&d).expect_err(what);
        assert!(err.contains(says), "{what}: {err}");
    }
}

#[test]
fn panels_have_unique_ids_and_every_target_a_query() {
    let d = dashboard();
    let ids: Vec<i64> = panels(&d)
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
    for p in panels(&d) {
        if p["type"] != "row" {
            assert!(
                !p["targets"].as_array().unwrap().is_empty(),
                "{}",
                p["title"]
            );
        }
    }
}

/// Metric names in PromQL `q`: Mahler's and the span metrics' identifiers
/// outside label matchers (`{...}`), `by (...)` / `without (...)` and
/// string literals.
fn metric_names(q: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let chars: Vec<char> = q.chars().collect();
    let skip_to = |i: usize, end: char| {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != end {
            j += 1;
        }
        j + 1
    };
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' => i = skip_to(i, '"'),
            '{' => i = skip_to(i, '}'),
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word == "by" || word == "without" {
                    while i < chars.len() && chars[i] == ' ' {
                        i += 1;
                    }
                    if i < chars.len() && chars[i] == '(' {
                        i = skip_to(i, ')');
                    }
                } else if word.starts_with("mahler_") || word.starts_with("traces_") {
                    out.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn metric_names_skip_labels_and_groupings() {
    let names = metric_names(
        r#"sum by (mahler_x) (rate(mahler_a_total{mahler_environment=~"mahler_q"}[5m])) / mahler_b"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["mahler_a_total", "mahler_b"]
    );
}

#[test]
fn operator_metrics_the_dashboard_queries_exist() {
    // Labelled families show in the exposition once they have a series.
    let m = mahler_controller::metrics::Metrics::default();
    m.reconciled(
        "Service",
        Duration::from_millis(3),
        mahler_controller::metrics::Outcome::Ok,
    );
    m.failed("Service", "conflict");
    m.wrote("Deployment", "apply");
    m.tofu_run("Apply", "Applied", Duration::from_secs(2));
    let _running = m.in_flight("Service");
    let registry = m.encode();
    let names: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|n| n.starts_with("mahler_"))
        .collect();
    assert!(names.len() >= 6, "{names:?}");
    for n in names {
        // The registry's TYPE line names the family (counters without
        // `_total`, histograms without `_bucket`).
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .unwrap_or(&n);
        assert!(
            registry.contains(&format!("# TYPE {family} ")),
            "the dashboard queries {n}, which the operator does not export:\n{registry}"
        );
    }
}

/// A collector process, killed when dropped.
struct Collector(std::process::Child);

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn curl(args: &[&str], body: Option<&str>) -> Option<String> {
    let mut c = Command::new("curl")
        .args(["-sf", "--max-time", "5"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    if let Some(b) = body {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(b.as_bytes()).ok()?;
    } else {
        drop(c.stdin.take());
    }
    let out = c.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn span_metrics_the_dashboard_queries_are_what_a_rendered_collector_serves() {
    let tools = required("MAHLER_TOOLS_DIR");
    let dir = tempfile::tempdir().unwrap();
    let (http, grpc, prom, health) = (free_port(), free_port(), free_port(), free_port());
    let t: mahler_api::TelemetrySpec =
        serde_yaml::from_str(&format!("{{exporter: {{prometheus: {{port: {prom}}}}}}}")).unwrap();
    let env = mahler_api::Environment::new(
        "shop-staging",
        mahler_api::EnvironmentSpec {
            project: "shop".into(),
            telemetry: Some(t.clone()),
            ..Default::default()
        },
    );
    let mut config = mahler_core::telemetry::render_config(&env, &t);
    // Local ports; k8s_attributes has no cluster here, so it goes (it only
    // adds pod attributes, not metric names).
    config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] =
        format!("127.0.0.1:{grpc}").into();
    config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] =
        format!("127.0.0.1:{http}").into();
    config["exporters"]["prometheus"]["endpoint"] = format!("127.0.0.1:{prom}").into();
    config["extensions"]["health_check"]["endpoint"] = format!("127.0.0.1:{health}").into();
    config["connectors"]["span_metrics"]["metrics_flush_interval"] = "200ms".into();
    config["service"]["telemetry"] = json!({"metrics": {"level": "none"}});
    config["processors"]
        .as_object_mut()
        .unwrap()
        .remove("k8s_attributes");
    for p in config["service"]["pipelines"]
        .as_object_mut()
        .unwrap()
        .values_mut()
    {
        p["processors"]
            .as_array_mut()
            .unwrap()
            .retain(|x| x != "k8s_attributes");
    }
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, mahler_core::telemetry::config_yaml(&config)).unwrap();
    let log = std::fs::File::create(dir.path().join("otelcol.log")).unwrap();
    let _collector = Collector(
        Command::new(tools.join("otelcol"))
            .arg(format!("--config=file:{}", path.display()))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start otelcol"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&[&format!("http://127.0.0.1:{health}/")], None).is_none() {
        assert!(
            Instant::now() < deadline,
            "collector not healthy: {}",
            std::fs::read_to_string(dir.path().join("otelcol.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // One server span with an error, as an SDK would send it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let span = json!({"resourceSpans": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
    "scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
        "name": "GET /orders", "kind": 2,
        "startTimeUnixNano": (now - 20_000_000).to_string(), "endTimeUnixNano": now.to_string(),
        "status": {"code": 2},
    }]}]}]});
    curl(
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
            &format!("http://127.0.0.1:{http}/v1/traces"),
        ],
        Some(&span.to_string()),
    )
    .expect("POST /v1/traces");
    let wanted: BTreeSet<String> = queries(&dashboard())
        .iter()
        .flat_map(|q| metric_names(q))
        .filter(|n| n.starts_with("traces_"))
        .collect();
    assert!(!wanted.is_empty());
    let mut scrape = String::new();
    while Instant::now() < deadline {
        scrape = curl(&[&format!("http://127.0.0.1:{prom}/metrics")], None).unwrap_or_default();
        if scrape.contains("traces_span_metrics") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for n in &wanted {
        assert!(
            scrape
                .lines()
                .any(|l| l.starts_with(&format!("{n}{{")) || l.starts_with(&format!("{n} "))),
            "the dashboard queries {n}; the collector serves:\n{scrape}"
        );
    }
    // The labels the panels filter and group by.
    for label in [
        "service_name=\"api\"",
        "span_kind=\"SPAN_KIND_SERVER\"",
        "status_code=\"STATUS_CODE_ERROR\"",
        "mahler_environment=\"shop-staging\"",
    ] {
        assert!(
            scrape.contains(label),
            "no {label} in the collector's metrics:\n{scrape}"
        );
    }
}
