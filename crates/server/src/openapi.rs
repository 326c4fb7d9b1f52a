//! The OpenAPI 3.1 document, assembled here from the schemars schemas of
//! the CRD types (the same derive that generates the CRDs) and of the
//! API's own views. Not with aide: its 0.16 line (the only one on
//! schemars 1) is an alpha, and it would have to own every handler's
//! signature (its extractor traits) to describe the custom body, path and
//! auth handling the API needs; the routes are few and uniform, so they
//! are listed here, and a test checks each one is routed (docs/api.md).

use schemars::generate::{SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mahler_api::{
    ConnectionSpec, ConnectionStatus, EnvironmentSpec, EnvironmentStatus, ProjectSpec,
    ProjectStatus, ServiceSpec, ServiceStatus,
};

use crate::body::{API_VERSION, ApproveRequest, DeployRequest};
use crate::error::ErrorBody;
use crate::names::{self, Kind};
use crate::views::{GraphView, StatusEvent};

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator()
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn sub<T: JsonSchema>(g: &mut SchemaGenerator) -> Value {
    let s: Schema = g.subschema_for::<T>();
    s.to_value()
}

/// Request-side schemas are closed (`additionalProperties: false`, as the
/// API server's strict field validation is), except where the CRD keeps
/// unknown fields; int-or-string values say so.
fn close(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let open = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            let composed = ["allOf", "anyOf", "oneOf"]
                .iter()
                .any(|k| m.contains_key(*k));
            if m.contains_key("properties")
                && !m.contains_key("additionalProperties")
                && !open
                && !composed
            {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
                && !m.contains_key("type")
            {
                m.insert("type".into(), json!(["integer", "string"]));
            }
            for (_, child) in m.iter_mut() {
                close(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(close),
        _ => {}
    }
}

struct KindDoc {
    kind: Kind,
    spec: &'static str,
    status: &'static str,
}

const KINDS: [KindDoc; 4] = [
    KindDoc {
        kind: Kind::Project,
        spec: "ProjectSpec",
        status: "ProjectStatus",
    },
    KindDoc {
        kind: Kind::Environment,
        spec: "EnvironmentSpec",
        status: "EnvironmentStatus",
    },
    KindDoc {
        kind: Kind::Service,
        spec: "ServiceSpec",
        status: "ServiceStatus",
    },
    KindDoc {
        kind: Kind::Connection,
        spec: "ConnectionSpec",
        status: "ConnectionStatus",
    },
];

fn name_schema(kind: Kind) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": kind.max_len(),
        "pattern": names::pattern(kind),
    })
}

fn schemas() -> Map<String, Value> {
    // Requests: closed.
    let mut g = generator();
    let mut refs = Map::new();
    refs.insert("ProjectSpec".into(), sub::<ProjectSpec>(&mut g));
    refs.insert("EnvironmentSpec".into(), sub::<EnvironmentSpec>(&mut g));
    refs.insert("ServiceSpec".into(), sub::<ServiceSpec>(&mut g));
    refs.insert("ConnectionSpec".into(), sub::<ConnectionSpec>(&mut g));
    refs.insert("DeployRequest".into(), sub::<DeployRequest>(&mut g));
    refs.insert("ApproveRequest".into(), sub::<ApproveRequest>(&mut g));
    let mut v = Value::Object(g.take_definitions(true));
    close(&mut v);
    for s in refs.values_mut() {
        close(s);
    }
    let Value::Object(mut out) = v else {
        unreachable!()
    };
    // Responses: as Kubernetes stores them (open).
    let mut g = generator();
    for (name, s) in [
        ("ProjectStatus", sub::<ProjectStatus>(&mut g)),
        ("EnvironmentStatus", sub::<EnvironmentStatus>(&mut g)),
        ("ServiceStatus", sub::<ServiceStatus>(&mut g)),
        ("ConnectionStatus", sub::<ConnectionStatus>(&mut g)),
        ("ObjectMeta", sub::<ObjectMeta>(&mut g)),
        ("Graph", sub::<GraphView>(&mut g)),
        ("StatusEvent", sub::<StatusEvent>(&mut g)),
        ("Error", sub::<ErrorBody>(&mut g)),
    ] {
        refs.insert(name.into(), s);
    }
    for (k, v) in g.take_definitions(true) {
        out.entry(k).or_insert(v);
    }
    // Short aliases for the types the operations use.
    for (name, s) in refs {
        if s.get("$ref").and_then(Value::as_str) != Some(&format!("#/components/schemas/{name}")) {
            out.insert(name, s);
        }
    }
    for k in &KINDS {
        let kind = k.kind.as_str();
        let mut meta = json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["name"],
            "properties": {
                "name": name_schema(k.kind),
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                "resourceVersion": {"type": "string", "description": "On PUT: replace only this version (409 when the object changed since). Without it, PUT replaces whatever is stored."},
            },
        });
        if k.kind.namespaced() {
            meta["properties"]["namespace"] =
                json!({"type": "string", "description": "The environment in the URL, if given."});
        }
        out.insert(format!("{kind}Request"), json!({
            "type": "object",
            "description": format!("A {kind} to create or replace. apiVersion, kind and namespace are filled in by the server and refused when they contradict the URL."),
            "additionalProperties": false,
            "required": ["metadata", "spec"],
            "properties": {
                "apiVersion": {"const": API_VERSION},
                "kind": {"const": kind},
                "metadata": meta,
                "spec": r(k.spec),
            },
        }));
        out.insert(format!("{kind}Patch"), json!({
            "type": "object",
            "description": format!("A JSON merge patch (RFC 7396) of a {kind}: null removes a field."),
            "additionalProperties": false,
            "properties": {
                "apiVersion": {"const": API_VERSION},
                "kind": {"const": kind},
                "metadata": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "labels": {"type": ["object", "null"], "additionalProperties": {"type": ["string", "null"]}},
                        "annotations": {"type": ["object", "null"], "additionalProperties": {"type": ["string", "null"]}},
                        "resourceVersion": {"type": "string"},
                    },
                },
                "spec": {"type": "object", "description": format!("Fields of {} to set (null removes one).", k.spec)},
            },
        }));
        out.insert(
            kind.to_string(),
            json!({
                "type": "object",
                "description": format!("A {kind} as Kubernetes stores it ({API_VERSION})."),
                "required": ["apiVersion", "kind", "metadata", "spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": r("ObjectMeta"),
                    "spec": r(k.spec),
                    "status": r(k.status),
                },
            }),
        );
        out.insert(
            format!("{kind}List"),
            json!({
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "items": {"type": "array", "items": r(kind)},
                },
            }),
        );
    }
    out.insert("Deleted".into(), json!({
        "type": "object",
        "description": "The object, marked for deletion while its finalizers run, or a Kubernetes Status.",
    }));
    out
}

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": r("Error")}}})
}

fn responses() -> Value {
    json!({
        "BadRequest": error_response("Bad input: malformed JSON, an unknown field, a wrong type, an invalid name or value (`field` names it). Nothing was written."),
        "Unauthorized": {
            "description": "No bearer token, or one Kubernetes did not accept.",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string", "const": "Bearer"}}},
            "content": {"application/json": {"schema": r("Error")}},
        },
        "Forbidden": error_response("Kubernetes RBAC denied the requesting user: `verb`, `resource` and `namespace` say what."),
        "NotFound": error_response("No such object, or no such route."),
        "MethodNotAllowed": error_response("The route does not take this method."),
        "Conflict": error_response("The object exists, changed since `resourceVersion`, or (approve) there is no such pending plan."),
        "TooLarge": error_response("The body is larger than the limit (--body-limit)."),
        "TooManyRequests": error_response("Kubernetes asked to slow down."),
        "BadGateway": error_response("The Kubernetes API failed or could not be reached."),
        "Unavailable": error_response("Tokens cannot be checked (TokenReview failed)."),
        "Timeout": error_response("The request took longer than --request-timeout, or Kubernetes did not answer in time."),
    })
}

fn resp(name: &str) -> Value {
    json!({"$ref": format!("#/components/responses/{name}")})
}

fn errors(with_body: bool) -> Map<String, Value> {
    let mut m = Map::new();
    for (code, name) in [
        ("400", "BadRequest"),
        ("401", "Unauthorized"),
        ("403", "Forbidden"),
        ("404", "NotFound"),
        ("405", "MethodNotAllowed"),
        ("409", "Conflict"),
        ("429", "TooManyRequests"),
        ("502", "BadGateway"),
        ("503", "Unavailable"),
        ("504", "Timeout"),
    ] {
        m.insert(code.into(), resp(name));
    }
    if with_body {
        m.insert("413".into(), resp("TooLarge"));
    }
    m
}

fn param(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": schema, "description": description})
}

fn env_param() -> Value {
    param(
        "env",
        name_schema(Kind::Environment),
        "The environment (its name is the namespace of its Services and Connections).",
    )
}

struct Op {
    id: String,
    summary: String,
    tag: &'static str,
    params: Vec<Value>,
    body: Option<(Value, &'static [&'static str], bool)>,
    ok: (&'static str, Value),
}

/// `?dryRun=All`: authorized, admitted and validated by Kubernetes, not stored.
fn dry_run_param() -> Value {
    json!({"name": "dryRun", "in": "query", "required": false,
        "schema": {"type": "string", "enum": ["All"]},
        "description": "All: Kubernetes authorizes, admits (admission policies included) and validates the write, and stores nothing."})
}

fn op(o: Op) -> Value {
    let mut responses = errors(o.body.is_some());
    responses.insert(o.ok.0.into(), o.ok.1);
    let mut v = json!({
        "operationId": o.id,
        "summary": o.summary,
        "tags": [o.tag],
        "responses": responses,
    });
    if !o.params.is_empty() {
        v["parameters"] = Value::Array(o.params);
    }
    if let Some((schema, types, required)) = o.body {
        let content: Map<String, Value> = types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": schema.clone()})))
            .collect();
        v["requestBody"] = json!({"required": required, "content": content});
    }
    v
}

fn json_ok(code: &'static str, description: &str, schema: Value) -> (&'static str, Value) {
    (
        code,
        json!({"description": description, "content": {"application/json": {"schema": schema}}}),
    )
}

fn paths() -> Map<String, Value> {
    let mut paths = Map::new();
    const JSON: &[&str] = &["application/json"];
    const MERGE: &[&str] = &["application/merge-patch+json", "application/json"];
    for k in &KINDS {
        let kind = k.kind.as_str();
        let plural = k.kind.plural();
        let (base, mut params, tag) = if k.kind.namespaced() {
            (
                format!("/api/v1/environments/{{env}}/{plural}"),
                vec![env_param()],
                "Services and Connections",
            )
        } else {
            (
                format!("/api/v1/{plural}"),
                vec![],
                if k.kind == Kind::Project {
                    "Projects"
                } else {
                    "Environments"
                },
            )
        };
        let mut list_params = params.clone();
        if k.kind == Kind::Environment {
            list_params.push(json!({"name": "project", "in": "query", "required": false,
                "schema": name_schema(Kind::Project), "description": "Only the environments of this project."}));
        }
        let mut write_params = params.clone();
        write_params.push(dry_run_param());
        let collection = json!({
            "get": op(Op {
                id: format!("list{kind}s"), summary: format!("List {plural}"), tag, params: list_params,
                body: None, ok: json_ok("200", &format!("The {plural}."), r(&format!("{kind}List"))),
            }),
            "post": op(Op {
                id: format!("create{kind}"), summary: format!("Create a {kind}"), tag, params: write_params,
                body: Some((r(&format!("{kind}Request")), JSON, true)),
                ok: json_ok("201", &format!("The {kind} created."), r(kind)),
            }),
        });
        paths.insert(base.clone(), collection);
        params.push(param(
            "name",
            name_schema(k.kind),
            &format!("The {kind}'s name."),
        ));
        let mut write_params = params.clone();
        write_params.push(dry_run_param());
        let item = json!({
            "get": op(Op {
                id: format!("get{kind}"), summary: format!("Read a {kind}"), tag, params: params.clone(),
                body: None, ok: json_ok("200", &format!("The {kind}."), r(kind)),
            }),
            "put": op(Op {
                id: format!("replace{kind}"), summary: format!("Replace a {kind}"), tag, params: write_params.clone(),
                body: Some((r(&format!("{kind}Request")), JSON, true)),
                ok: json_ok("200", &format!("The {kind} replaced."), r(kind)),
            }),
            "patch": op(Op {
                id: format!("patch{kind}"), summary: format!("Change a {kind} with a JSON merge patch"), tag, params: write_params.clone(),
                body: Some((r(&format!("{kind}Patch")), MERGE, true)),
                ok: json_ok("200", &format!("The {kind} changed."), r(kind)),
            }),
            "delete": op(Op {
                id: format!("delete{kind}"), summary: format!("Delete a {kind}"), tag, params: write_params.clone(),
                body: None, ok: json_ok("200", "Deleted, or being deleted.", r("Deleted")),
            }),
        });
        paths.insert(format!("{base}/{{name}}"), item);
        if k.kind == Kind::Service {
            paths.insert(
                format!("{base}/{{name}}/deploy"),
                json!({"post": op(Op {
                    id: "deployService".into(),
                    summary: "Deploy an image: a merge patch of spec.source.image only".into(),
                    tag, params: write_params.clone(), body: Some((r("DeployRequest"), JSON, true)),
                    ok: json_ok("200", "The Service with its new image.", r("Service")),
                })}),
            );
            paths.insert(format!("{base}/{{name}}/approve"), json!({"post": op(Op {
                id: "approvePlan".into(),
                summary: "Approve the pending Terraform plan of a template Service, as the requesting user".into(),
                tag, params: write_params.clone(), body: Some((r("ApproveRequest"), JSON, false)),
                ok: json_ok("200", "The Service with the approval annotations.", r("Service")),
            })}));
        }
    }
    paths.insert("/api/v1/environments/{env}/graph".into(), json!({"get": op(Op {
        id: "environmentGraph".into(), summary: "The connection graph of an environment".into(),
        tag: "Environments", params: vec![env_param()], body: None,
        ok: json_ok("200", "Services as nodes, Connections as edges, missing ends listed.", r("Graph")),
    })}));
    let mut events = op(Op {
        id: "environmentEvents".into(),
        summary: "Server-sent events: status changes of the environment's Services and Connections"
            .into(),
        tag: "Environments",
        params: vec![env_param()],
        body: None,
        ok: (
            "200",
            json!({
                "description": "An `event: status` per change of an object's Ready state, reason or message (data: a StatusEvent as JSON; the current state of every object first), `event: error` when the watch fails (it retries), and `: keep-alive` comments every 15 s. Ends when the server shuts down.",
                "content": {"text/event-stream": {"schema": {"type": "string"}, "x-event-data": r("StatusEvent")}},
            }),
        ),
    });
    events["responses"]
        .as_object_mut()
        .expect("an object")
        .remove("504");
    paths.insert(
        "/api/v1/environments/{env}/events".into(),
        json!({"get": events}),
    );
    let open = |id: &str, summary: &str, ok: (&'static str, Value)| json!({"get": {"operationId": id, "summary": summary, "tags": ["Server"], "security": [], "responses": {ok.0: ok.1}}});
    paths.insert(
        "/openapi.json".into(),
        open(
            "openapi",
            "This document",
            json_ok("200", "OpenAPI 3.1", json!({"type": "object"})),
        ),
    );
    paths.insert(
        "/healthz".into(),
        open(
            "healthz",
            "Liveness: the server runs",
            json_ok("200", "ok", json!({"type": "object"})),
        ),
    );
    let mut ready = open(
        "readyz",
        "Readiness: the Kubernetes API answers",
        json_ok("200", "ok", json!({"type": "object"})),
    );
    ready["get"]["responses"]["503"] = resp("Unavailable");
    paths.insert("/readyz".into(), ready);
    paths.insert(
        "/metrics".into(),
        open(
            "metrics",
            "Prometheus metrics",
            (
                "200",
                json!({
                    "description": "OpenMetrics text",
                    "content": {"application/openmetrics-text": {"schema": {"type": "string"}}},
                }),
            ),
        ),
    );
    paths
}

/// The document served at `/openapi.json` and committed as docs/openapi.json.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Mahler API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Projects, environments, services and connections over HTTP. Every call is made to Kubernetes as the requesting user (TokenReview, then impersonation): Kubernetes RBAC and admission policies decide. See docs/api.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "security": [{"bearer": []}],
        "tags": [
            {"name": "Projects"}, {"name": "Environments"}, {"name": "Services and Connections"}, {"name": "Server"},
        ],
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A Kubernetes bearer token (a ServiceAccount token, an OIDC ID token), checked with TokenReview.",
            }},
            "responses": responses(),
            "schemas": schemas(),
        },
    })
}

/// The document as committed: pretty JSON and a final newline.
pub fn render() -> String {
    let mut s = serde_json::to_string_pretty(&document()).expect("the document serialises");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let responses = doc["components"]["responses"].as_object().unwrap();
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = part.split('"').next().unwrap();
            if let Some(name) = target.strip_prefix("#/components/schemas/") {
                assert!(schemas.contains_key(name), "missing schema {name}");
            } else if let Some(name) = target.strip_prefix("#/components/responses/") {
                assert!(responses.contains_key(name), "missing response {name}");
            } else {
                panic!("unexpected $ref {target}");
            }
        }
    }

    #[test]
    fn spec_schemas_come_from_the_crd_types_and_are_closed() {
        let doc = document();
        let spec = &doc["components"]["schemas"]["ServiceSpec"];
        assert_eq!(spec["additionalProperties"], json!(false));
        assert!(
            spec["properties"]["replicas"]["maximum"] == json!(1000),
            "{spec}"
        );
        let inputs = &doc["components"]["schemas"]["TemplateSource"]["properties"]["inputs"];
        assert_ne!(
            inputs.get("additionalProperties"),
            Some(&json!(false)),
            "free-form stays open"
        );
    }

    #[test]
    fn every_operation_documents_the_error_body() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            if !path.starts_with("/api/") {
                continue;
            }
            for (method, o) in item.as_object().unwrap() {
                for code in ["400", "401", "403", "404"] {
                    assert!(
                        o["responses"].get(code).is_some(),
                        "{method} {path} lacks {code}"
                    );
                }
            }
        }
    }
}
