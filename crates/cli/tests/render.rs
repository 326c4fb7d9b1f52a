//! Snapshot tests of what `status`, `graph`, `explain` and the list tables
//! print, on a fixed environment (tests/fixtures/shop-staging.yaml: objects
//! taken from a live cluster, timestamps fixed, plus one written by hand).
//! `cargo insta review` (or INSTA_UPDATE=always) updates the snapshots.

use mahler_api::{Connection, Environment, Service};
use mahler_cli::args::Output;
use mahler_cli::output::Printer;
use mahler_cli::render;
use mahler_client::Environment as EnvView;

fn fixture() -> EnvView {
    let text = include_str!("fixtures/shop-staging.yaml");
    let mut environment = None;
    let (mut services, mut connections) = (Vec::new(), Vec::new());
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        match value["kind"].as_str() {
            Some("Environment") => {
                environment = Some(serde_json::from_value::<Environment>(value).unwrap())
            }
            Some("Service") => services.push(serde_json::from_value::<Service>(value).unwrap()),
            Some("Connection") => {
                connections.push(serde_json::from_value::<Connection>(value).unwrap())
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    services.sort_by_key(|s| s.metadata.name.clone());
    connections.sort_by_key(|c| c.metadata.name.clone());
    EnvView {
        environment: environment.expect("an Environment"),
        services,
        connections,
    }
}

fn plain() -> Printer {
    Printer {
        format: Output::Table,
        color: false,
        width: None,
    }
}

#[test]
fn status() {
    insta::assert_snapshot!(render::status(&plain(), &fixture()));
}

#[test]
fn graph() {
    let env = fixture();
    let g = env.graph();
    insta::assert_snapshot!("graph_table", render::graph_table(&plain(), &g));
    insta::assert_snapshot!("graph_dot", g.to_dot());
    insta::assert_snapshot!("graph_mermaid", g.to_mermaid());
}

#[test]
fn explain() {
    let env = fixture();
    for name in ["reporting", "stuck", "api", "db"] {
        let steps = mahler_client::explain::explain(&env, name, &[]).unwrap();
        insta::assert_snapshot!(
            format!("explain_{name}"),
            render::explain(&plain(), name, &steps)
        );
    }
}

#[test]
fn list_tables() {
    let env = fixture();
    let p = plain();
    insta::assert_snapshot!("services_wide", render::services(&p, &env.services, true));
    insta::assert_snapshot!(
        "connections",
        render::connections(&p, &env.connections, false)
    );
    insta::assert_snapshot!(
        "environments_wide",
        render::environments(&p, std::slice::from_ref(&env.environment), true)
    );
}

#[test]
fn colour_only_when_asked() {
    let env = fixture();
    assert!(!render::status(&plain(), &env).contains('\u{1b}'));
    let coloured = Printer {
        color: true,
        ..plain()
    };
    assert!(render::status(&coloured, &env).contains("\u{1b}[32mReady"));
}
