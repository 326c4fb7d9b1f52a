//! The handlers of `/api/v1`: each checks the URL and body, then makes its
//! Kubernetes calls with the requesting user's impersonating client. A GET
//! is one Kubernetes call (the TokenReview is cached).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kube::Resource;
use kube::api::{Api, DeleteParams, GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::Request;
use mahler_api::names::{APPROVE_ANNOTATION, APPROVED_BY_ANNOTATION};
use mahler_api::terraform::PlanPhase;
use mahler_api::{
    Connection, ConnectionSpec, Environment, EnvironmentSpec, Project, ProjectSpec, Service,
    ServiceSpec,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::App;
use crate::auth::Identity;
use crate::body::{self, ApproveRequest, DeployRequest, Target};
use crate::error::{Action, ApiError};
use crate::names::{self, Kind};

/// The field manager of every write the API makes.
pub const FIELD_MANAGER: &str = "mahler-api";

pub type Params = Result<Path<HashMap<String, String>>, PathRejection>;

/// Where a request points: the kind, the environment (namespace) and name.
#[derive(Clone, Debug)]
pub struct Loc {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Loc {
    /// From the path parameters `env` and `name`, checked as names.
    pub fn from_params(kind: Kind, params: Params) -> Result<Self, ApiError> {
        let Path(p) =
            params.map_err(|e| ApiError::bad_request(format!("bad URL: {}", e.body_text())))?;
        let namespace = match p.get("env") {
            Some(env) => {
                names::check(Kind::Environment, "env", env)?;
                Some(env.clone())
            }
            None => None,
        };
        let name = match p.get("name") {
            Some(n) => {
                names::check(kind, "name", n)?;
                Some(n.clone())
            }
            None => None,
        };
        Ok(Loc {
            kind,
            namespace,
            name,
        })
    }

    fn url(&self) -> String {
        let ns = self.namespace.as_deref();
        match self.kind {
            Kind::Project => Project::url_path(&(), None),
            Kind::Environment => Environment::url_path(&(), None),
            Kind::Service => Service::url_path(&(), ns),
            Kind::Connection => Connection::url_path(&(), ns),
        }
    }

    fn request(&self) -> Request {
        Request::new(self.url())
    }

    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    pub fn action(&self, verb: &'static str) -> Action {
        Action {
            verb,
            resource: self.kind.resource(),
            namespace: self.namespace.clone(),
        }
    }

    fn target(&self) -> Target<'_> {
        Target {
            kind: self.kind,
            namespace: self.namespace.as_deref(),
            name: self.name.as_deref(),
        }
    }
}

fn build_err(e: kube::core::request::Error) -> ApiError {
    ApiError::bad_request(format!("the request could not be built: {e}"))
}

/// Adds `fieldValidation=Strict` (kube's PostParams has no field for it).
fn strict(mut req: http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    let uri = req.uri().to_string();
    let sep = if uri.contains('?') { '&' } else { '?' };
    if let Ok(u) = format!("{uri}{sep}fieldValidation=Strict").parse() {
        *req.uri_mut() = u;
    }
    req
}

async fn call(
    id: &Identity,
    req: http::Request<Vec<u8>>,
    action: Action,
) -> Result<Value, ApiError> {
    id.client
        .request::<Value>(req)
        .await
        .map_err(|e| ApiError::from_kube(e, &action))
}

/// `?dryRun=All` on a write: Kubernetes authorizes, admits (the admission
/// policies included) and validates it, and stores nothing.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct WriteQuery {
    #[serde(rename = "dryRun", default)]
    pub dry_run: Option<DryRun>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
pub enum DryRun {
    All,
}

impl WriteQuery {
    fn dry(&self) -> bool {
        self.dry_run == Some(DryRun::All)
    }
}

fn post_params(w: WriteQuery) -> PostParams {
    PostParams {
        dry_run: w.dry(),
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

fn patch_params(w: WriteQuery) -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        dry_run: w.dry(),
        ..Default::default()
    }
    .validation_strict()
}

pub async fn list(id: &Identity, loc: &Loc, project: Option<&str>) -> Result<Response, ApiError> {
    let req = loc
        .request()
        .list(&ListParams::default())
        .map_err(build_err)?;
    let mut list = match call(id, req, loc.action("list")).await {
        Ok(list) => list,
        // A project member may not list Projects or Environments, only get
        // their own: list those (mahler_client::visible).
        Err(e) if e.code() == 403 && !loc.kind.namespaced() => {
            visible_list(id, loc).await.map_err(|_| e)?
        }
        Err(e) => return Err(e),
    };
    if let Some(project) = project
        && let Some(items) = list.get_mut("items").and_then(Value::as_array_mut)
    {
        items.retain(|i| i.pointer("/spec/project").and_then(Value::as_str) == Some(project));
    }
    Ok(Json(list).into_response())
}

/// The Projects or Environments the caller may get, as a Kubernetes list.
async fn visible_list(id: &Identity, loc: &Loc) -> Result<Value, kube::Error> {
    let (kind, items) = match loc.kind {
        Kind::Project => (
            "ProjectList",
            serde_json::to_value(
                mahler_client::visible::list_visible::<mahler_api::Project>(&id.client).await?,
            ),
        ),
        _ => (
            "EnvironmentList",
            serde_json::to_value(
                mahler_client::visible::list_visible::<mahler_api::Environment>(&id.client).await?,
            ),
        ),
    };
    let mut items = items.unwrap_or_default();
    // Items of a typed list carry their kind, as in a Kubernetes list.
    if let Value::Array(objs) = &mut items {
        for o in objs {
            o["apiVersion"] = json!("mahler.dev/v1alpha1");
            o["kind"] = json!(kind.trim_end_matches("List"));
        }
    }
    Ok(json!({"apiVersion": "mahler.dev/v1alpha1", "kind": kind, "metadata": {}, "items": items}))
}

pub async fn get(id: &Identity, loc: &Loc) -> Result<Response, ApiError> {
    let req = loc
        .request()
        .get(loc.name(), &GetParams::default())
        .map_err(build_err)?;
    Ok(Json(call(id, req, loc.action("get")).await?).into_response())
}

fn parse_object(loc: &Loc, bytes: &[u8]) -> Result<body::Object, ApiError> {
    let t = loc.target();
    match loc.kind {
        Kind::Project => body::object::<ProjectSpec>(bytes, &t),
        Kind::Environment => body::object::<EnvironmentSpec>(bytes, &t),
        Kind::Service => body::object::<ServiceSpec>(bytes, &t),
        Kind::Connection => body::object::<ConnectionSpec>(bytes, &t),
    }
}

pub async fn create(
    id: &Identity,
    loc: &Loc,
    bytes: &[u8],
    w: WriteQuery,
) -> Result<Response, ApiError> {
    let obj = parse_object(loc, bytes)?;
    let data = serde_json::to_vec(&obj.value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let req = strict(
        loc.request()
            .create(&post_params(w), data)
            .map_err(build_err)?,
    );
    let created = call(id, req, loc.action("create")).await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// A replace of what the API writes (spec, labels, annotations). Without
/// `metadata.resourceVersion` it replaces whatever is there; with it, a 409
/// when the object changed since. The current object is read first: its
/// finalizers and owner references are kept (a Kubernetes update replaces
/// them wholesale, and dropping the operator's finalizer would skip its
/// cleanup).
pub async fn replace(
    id: &Identity,
    loc: &Loc,
    bytes: &[u8],
    w: WriteQuery,
) -> Result<Response, ApiError> {
    let mut obj = parse_object(loc, bytes)?;
    let req = loc
        .request()
        .get(loc.name(), &GetParams::default())
        .map_err(build_err)?;
    let current = call(id, req, loc.action("get")).await?;
    for field in ["finalizers", "ownerReferences"] {
        if let Some(v) = current.pointer(&format!("/metadata/{field}")).cloned() {
            obj.value["metadata"][field] = v;
        }
    }
    if obj.resource_version.is_none()
        && let Some(rv) = current.pointer("/metadata/resourceVersion").cloned()
    {
        obj.value["metadata"]["resourceVersion"] = rv;
    }
    let data = serde_json::to_vec(&obj.value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let req = strict(
        loc.request()
            .replace(loc.name(), &post_params(w), data)
            .map_err(build_err)?,
    );
    Ok(Json(call(id, req, loc.action("update")).await?).into_response())
}

pub async fn patch(
    id: &Identity,
    loc: &Loc,
    bytes: &[u8],
    w: WriteQuery,
) -> Result<Response, ApiError> {
    let patch = body::merge_patch(bytes, &loc.target())?;
    let req = loc
        .request()
        .patch(loc.name(), &patch_params(w), &Patch::Merge(&patch))
        .map_err(build_err)?;
    Ok(Json(call(id, req, loc.action("patch")).await?).into_response())
}

pub async fn delete(id: &Identity, loc: &Loc, w: WriteQuery) -> Result<Response, ApiError> {
    let req = loc
        .request()
        .delete(
            loc.name(),
            &DeleteParams {
                dry_run: w.dry(),
                ..Default::default()
            },
        )
        .map_err(build_err)?;
    Ok(Json(call(id, req, loc.action("delete")).await?).into_response())
}

/// `deploy`: a merge patch of `spec.source.image` only.
pub async fn deploy(
    id: &Identity,
    loc: &Loc,
    bytes: &[u8],
    w: WriteQuery,
) -> Result<Response, ApiError> {
    let d = DeployRequest::parse(bytes)?;
    let patch = json!({"spec": {"source": {"image": d.image}}});
    let req = loc
        .request()
        .patch(loc.name(), &patch_params(w), &Patch::Merge(&patch))
        .map_err(build_err)?;
    Ok(Json(call(id, req, loc.action("patch")).await?).into_response())
}

/// `approve`: the approval annotations, as the reviewed user, on the
/// pending plan (409 when there is none or it is another plan). The patch
/// carries the resourceVersion read, so a plan replaced in between is a 409
/// too, not an approval of a plan nobody saw.
pub async fn approve(
    id: &Identity,
    loc: &Loc,
    bytes: &[u8],
    w: WriteQuery,
) -> Result<Response, ApiError> {
    let a = ApproveRequest::parse(bytes)?;
    let ns = loc.namespace.as_deref().unwrap_or_default();
    let name = loc.name();
    let svc = Api::<Service>::namespaced(id.client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| ApiError::from_kube(e, &loc.action("get")))?;
    let plan = svc
        .status
        .as_ref()
        .and_then(|s| s.terraform.as_ref())
        .and_then(|t| t.plan.clone())
        .filter(|p| p.phase == PlanPhase::Pending);
    let Some(plan) = plan else {
        return Err(ApiError::conflict(format!(
            "Service {name} in {ns} has no plan awaiting approval"
        )));
    };
    if let Some(wanted) = &a.plan
        && wanted != &plan.id
    {
        let mut e = ApiError::conflict(format!(
            "plan {wanted} is not the pending plan of Service {name}: the pending plan is {} (the spec or the infrastructure changed since)",
            plan.id
        ));
        e.0.error.field = Some("plan".into());
        return Err(e);
    }
    let patch = json!({"metadata": {
        "resourceVersion": svc.metadata.resource_version,
        "annotations": {
            APPROVE_ANNOTATION: plan.id,
            APPROVED_BY_ANNOTATION: id.username,
        },
    }});
    let req = loc
        .request()
        .patch(name, &patch_params(w), &Patch::Merge(&patch))
        .map_err(build_err)?;
    Ok(Json(call(id, req, loc.action("patch")).await?).into_response())
}

/// `graph`: the Environment, then its Services and Connections.
pub async fn graph(id: &Identity, env: &str) -> Result<Response, ApiError> {
    let action = |verb, kind: Kind, ns: Option<&str>| Action {
        verb,
        resource: kind.resource(),
        namespace: ns.map(str::to_string),
    };
    let environment = Api::<Environment>::all(id.client.clone())
        .get(env)
        .await
        .map_err(|e| ApiError::from_kube(e, &action("get", Kind::Environment, None)))?;
    let read = mahler_client::Environment::read_in(&id.client, environment)
        .await
        .map_err(|e| ApiError::from_kube(e, &action("list", Kind::Service, Some(env))))?;
    Ok(Json(crate::views::graph(env, &read.graph())).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProjectFilter {
    pub project: Option<String>,
}

/// Axum handlers: one per route and method, each a line over the above.
pub mod routes {
    use super::*;

    type St = State<Arc<App>>;
    type Id = Extension<Arc<Identity>>;
    type Wq = Result<Query<WriteQuery>, QueryRejection>;

    fn write_query(q: Wq) -> Result<WriteQuery, ApiError> {
        q.map(|Query(w)| w).map_err(|e| {
            ApiError::bad_request(format!(
                "bad query: {} (the only parameter of a write is dryRun=All)",
                e.body_text()
            ))
        })
    }

    /// What every write reads from its request: where (the path), how
    /// (`?dryRun`), and the body (within the size limit), in that order.
    async fn write_input(
        app: &App,
        kind: Kind,
        p: Params,
        q: Wq,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Loc, WriteQuery, bytes::Bytes), ApiError> {
        let loc = Loc::from_params(kind, p)?;
        let w = write_query(q)?;
        let bytes = body::read(headers, body, app.body_limit).await?;
        Ok((loc, w, bytes))
    }

    macro_rules! kind_routes {
        ($kind:expr, $list:ident, $create:ident, $get:ident, $replace:ident, $patch:ident, $delete:ident) => {
            pub async fn $list(Extension(id): Id, p: Params) -> Result<Response, ApiError> {
                let loc = Loc::from_params($kind, p)?;
                list(&id, &loc, None).await
            }
            pub async fn $create(
                State(app): St,
                Extension(id): Id,
                p: Params,
                q: Wq,
                h: HeaderMap,
                b: Body,
            ) -> Result<Response, ApiError> {
                let (loc, w, bytes) = write_input(&app, $kind, p, q, &h, b).await?;
                create(&id, &loc, &bytes, w).await
            }
            pub async fn $get(Extension(id): Id, p: Params) -> Result<Response, ApiError> {
                get(&id, &Loc::from_params($kind, p)?).await
            }
            pub async fn $replace(
                State(app): St,
                Extension(id): Id,
                p: Params,
                q: Wq,
                h: HeaderMap,
                b: Body,
            ) -> Result<Response, ApiError> {
                let (loc, w, bytes) = write_input(&app, $kind, p, q, &h, b).await?;
                replace(&id, &loc, &bytes, w).await
            }
            pub async fn $patch(
                State(app): St,
                Extension(id): Id,
                p: Params,
                q: Wq,
                h: HeaderMap,
                b: Body,
            ) -> Result<Response, ApiError> {
                let (loc, w, bytes) = write_input(&app, $kind, p, q, &h, b).await?;
                patch(&id, &loc, &bytes, w).await
            }
            pub async fn $delete(
                Extension(id): Id,
                p: Params,
                q: Wq,
            ) -> Result<Response, ApiError> {
                let loc = Loc::from_params($kind, p)?;
                delete(&id, &loc, write_query(q)?).await
            }
        };
    }

    kind_routes!(
        Kind::Project,
        list_projects,
        create_project,
        get_project,
        replace_project,
        patch_project,
        delete_project
    );
    kind_routes!(
        Kind::Environment,
        list_environments_unfiltered,
        create_environment,
        get_environment,
        replace_environment,
        patch_environment,
        delete_environment
    );
    kind_routes!(
        Kind::Service,
        list_services,
        create_service,
        get_service,
        replace_service,
        patch_service,
        delete_service
    );
    kind_routes!(
        Kind::Connection,
        list_connections,
        create_connection,
        get_connection,
        replace_connection,
        patch_connection,
        delete_connection
    );

    pub async fn list_environments(
        Extension(id): Id,
        q: Result<Query<ProjectFilter>, QueryRejection>,
    ) -> Result<Response, ApiError> {
        let Query(filter) =
            q.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
        if let Some(p) = &filter.project {
            names::check(Kind::Project, "project", p)?;
        }
        let loc = Loc {
            kind: Kind::Environment,
            namespace: None,
            name: None,
        };
        list(&id, &loc, filter.project.as_deref()).await
    }

    pub async fn deploy_service(
        State(app): St,
        Extension(id): Id,
        p: Params,
        q: Wq,
        h: HeaderMap,
        b: Body,
    ) -> Result<Response, ApiError> {
        let (loc, w, bytes) = write_input(&app, Kind::Service, p, q, &h, b).await?;
        deploy(&id, &loc, &bytes, w).await
    }

    pub async fn approve_service(
        State(app): St,
        Extension(id): Id,
        p: Params,
        q: Wq,
        h: HeaderMap,
        b: Body,
    ) -> Result<Response, ApiError> {
        let (loc, w, bytes) = write_input(&app, Kind::Service, p, q, &h, b).await?;
        approve(&id, &loc, &bytes, w).await
    }

    pub async fn environment_graph(Extension(id): Id, p: Params) -> Result<Response, ApiError> {
        let loc = Loc::from_params(Kind::Service, p)?;
        graph(&id, loc.namespace.as_deref().unwrap_or_default()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_strict_validation() {
        let loc = Loc {
            kind: Kind::Service,
            namespace: Some("shop-dev".into()),
            name: Some("api".into()),
        };
        assert_eq!(
            loc.url(),
            "/apis/mahler.dev/v1alpha1/namespaces/shop-dev/services"
        );
        let req = strict(
            loc.request()
                .create(&post_params(WriteQuery::default()), vec![])
                .unwrap(),
        );
        assert_eq!(
            req.uri().to_string(),
            "/apis/mahler.dev/v1alpha1/namespaces/shop-dev/services?&fieldManager=mahler-api&fieldValidation=Strict"
        );
        let p = Loc {
            kind: Kind::Project,
            namespace: None,
            name: None,
        };
        assert_eq!(p.url(), "/apis/mahler.dev/v1alpha1/projects");
        let req = loc
            .request()
            .patch(
                "api",
                &patch_params(WriteQuery::default()),
                &Patch::Merge(&json!({})),
            )
            .unwrap();
        assert!(
            req.uri().to_string().contains("fieldValidation=Strict"),
            "{}",
            req.uri()
        );
    }
}
