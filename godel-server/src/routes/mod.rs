//! The HTTP routes, one file per resource: `tasks.rs`, `dead_letters.rs`,
//! `queue.rs`, `agents.rs`, `sessions.rs`, `instances.rs`, `health.rs`,
//! `metrics.rs` and `events.rs` (the `/events` WebSocket). This file
//! composes them and holds what they share: the body and query filters,
//! path-parameter parsing and the reply builders.
//!
//! Each handler returns `ApiResult<Response>`; errors become the envelope in
//! one place (`ApiError::into_response`). Handlers read from the store
//! directly but change state only through the orchestrator. Who is calling
//! comes from the guard (`crate::auth`) as a `RequestContext` ([`ctx`]);
//! every read and write is scoped to the caller's tenant. Every route
//! under `/api/v1` is also served under `/api` with `Deprecation` and
//! `Sunset` headers.

mod agents;
mod audit;
mod dead_letters;
mod events;
mod health;
mod instances;
pub(crate) mod keys;
mod metrics;
mod quarantine;
mod queue;
mod sessions;
mod tasks;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use godel_core::store::{Cursor, SortOrder, TaskFilter, TaskQuery};
use godel_core::{AgentId, Priority, SessionId, TaskId, TaskStatus, TenantId, TenantScope, Timestamp};
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::hyper::body::Bytes;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::{ApiError, ApiResult};

/// Largest request body accepted.
pub(crate) const MAX_BODY: u64 = 1 << 20;
/// Largest page a listing returns.
const MAX_LIMIT: usize = 100;
/// When the `/api` alias goes away (RFC 8594 `Sunset`).
const SUNSET: &str = "Fri, 01 Jan 2027 00:00:00 GMT";

/// Every route of the server.
pub(crate) fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let api = api_routes(&state);
    let v1 = warp::path!("api" / "v1" / ..).and(api.clone());
    let legacy = warp::path("api").and(api).map(|reply: Response| {
        let mut reply = reply;
        let headers = reply.headers_mut();
        headers.insert("Deprecation", header::HeaderValue::from_static("true"));
        headers.insert("Sunset", header::HeaderValue::from_static(SUNSET));
        headers.insert(header::LINK, header::HeaderValue::from_static("</api/v1>; rel=\"successor-version\""));
        reply
    });
    let openapi = warp::path!("openapi.json").and(warp::get()).map(|| {
        let mut reply = Response::new(crate::OPENAPI.into());
        reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        reply
    });
    // Only under /api/v1: workers are new, so the deprecated /api alias never had them.
    // The guard let only worker and admin credentials through.
    let workers = warp::path!("api" / "v1" / "workers" / "connect")
        .and(warp::ws())
        .and(with(state.clone()))
        .and(ctx())
        .and(warp::ext::optional::<crate::listener::Peer>())
        .map(
            |ws: warp::ws::Ws,
             state: Arc<AppState>,
             ctx: RequestContext,
             peer: Option<crate::listener::Peer>|
             -> Response {
                let credential = ctx.principal.as_ref().map(|p| p.credential.as_str()).unwrap_or_default();
                tracing::info!(peer = %ctx.source, request_id = ctx.request_id, credential, "worker connecting");
                let tracker = state.connections.clone();
                let peer = peer.map(|p| p.0);
                let tenant = tenant(&state, &ctx);
                ws.on_upgrade(move |socket| tracker.track_future(crate::workers::serve(socket, state, tenant, peer)))
                    .into_response()
            },
        )
        .or(warp::path!("api" / "v1" / "workers" / "connect").and(warp::get()).and(upgrade_required()))
        .unify();
    let routes = workers.or(v1).unify().or(legacy).unify().or(health::routes(&state)).unify();
    let routes = routes.or(metrics::routes(&state)).unify().or(openapi).unify();
    routes.or(events::routes(&state)).unify().boxed()
}

/// The routes under `/api/v1` (and `/api`), by resource. Their paths do not
/// overlap, so the order between resources does not matter; inside each,
/// literal paths come before the `{id}` ones they would otherwise match.
fn api_routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let routes = tasks::routes(state).or(queue::routes(state)).unify().or(dead_letters::routes(state)).unify();
    let routes = routes.or(agents::routes(state)).unify().or(sessions::routes(state)).unify();
    let routes = routes.or(instances::routes(state)).unify();
    let routes = routes.or(keys::routes(state)).unify().or(audit::routes(state)).unify();
    routes.or(quarantine::routes(state)).unify().boxed()
}

/// Who is calling: the context the guard put in the request's extensions.
pub(crate) fn ctx() -> impl Filter<Extract = (RequestContext,), Error = warp::Rejection> + Clone {
    warp::ext::get::<RequestContext>()
}

/// The tenant a request acts as: its credential's, or on a public route the
/// default one.
pub(super) fn tenant(state: &AppState, ctx: &RequestContext) -> TenantId {
    ctx.principal.as_ref().map_or_else(|| state.default_tenant(), |p| p.tenant.clone())
}

/// The orchestrator's commands for the caller's tenant: every write goes
/// through it, so no request can change another tenant's tasks.
pub(super) fn scope(state: &AppState, ctx: &RequestContext) -> TenantScope {
    state.orchestrator.tenant(tenant(state, ctx))
}

pub(super) fn with(state: Arc<AppState>) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The request body, at most [`MAX_BODY`] bytes. A request without
/// `Content-Length` and without a chunked body has an empty body (what
/// `curl -X POST` sends); a chunked one is refused with 411.
pub(super) fn body() -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
    let sized = warp::body::content_length_limit(MAX_BODY).and(warp::body::bytes());
    let empty = warp::header::optional::<String>("content-length")
        .and(warp::header::optional::<String>("transfer-encoding"))
        .and_then(|length: Option<String>, chunked: Option<String>| async move {
            match (length, chunked) {
                (None, None) => Ok(Bytes::new()),
                // Let the sized filter's rejection (413, 411) stand.
                _ => Err(warp::reject::reject()),
            }
        });
    sized.or(empty).unify()
}

/// What a WebSocket route answers a request that is not an upgrade
/// handshake: 426 with the headers that say how to ask.
pub(super) fn upgrade_required() -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    warp::any().map(|| ApiError::upgrade_required().into_response())
}

pub(super) fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

pub(super) async fn respond(result: impl std::future::Future<Output = ApiResult>) -> Response {
    result.await.unwrap_or_else(ApiError::into_response)
}

pub(super) fn json_with(status: StatusCode, value: &impl serde::Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

pub(super) fn ok(value: &impl serde::Serialize) -> ApiResult {
    Ok(json_with(StatusCode::OK, value))
}

pub(super) fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A path segment as the client meant it: percent-decoded, UTF-8.
fn segment(raw: &str) -> ApiResult<Cow<'_, str>> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::invalid(format!("invalid path segment {raw:?}: not UTF-8 once percent-decoded")))
}

/// A task id from a path segment (percent-encoded).
pub(super) fn task_id(raw: &str) -> ApiResult<TaskId> {
    parse_task_id(&segment(raw)?)
}

/// A task id from a query or a body (already decoded).
pub(super) fn parse_task_id(id: &str) -> ApiResult<TaskId> {
    id.parse().map_err(|_| ApiError::invalid(format!("invalid task id: expected a UUID, got {id:?}")))
}

/// An agent id from a path segment (percent-encoded).
pub(super) fn agent_id(raw: &str) -> ApiResult<AgentId> {
    parse_agent_id(&segment(raw)?)
}

/// An agent id from a query or a body (already decoded).
pub(super) fn parse_agent_id(id: &str) -> ApiResult<AgentId> {
    AgentId::new(id).map_err(ApiError::from)
}

/// Query parameters, checked one by one; unknown names are errors.
pub(super) struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    pub(super) fn parse(raw: &str, known: &[&str]) -> ApiResult<Self> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(raw).map_err(|e| ApiError::invalid(format!("malformed query string: {e}")))?;
        let mut values = BTreeMap::new();
        for (k, v) in pairs {
            if !known.contains(&k.as_str()) {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {k:?} (known: {})",
                    if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                )));
            }
            if values.insert(k.clone(), v).is_some() {
                return Err(ApiError::invalid(format!(
                    "query parameter {k:?} given twice; use a comma-separated list"
                )));
            }
        }
        Ok(Self { values })
    }

    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub(super) fn list<T: std::str::FromStr<Err = godel_core::InvalidInput>>(&self, name: &str) -> ApiResult<Vec<T>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(v) => v.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().map_err(ApiError::from)).collect(),
        }
    }

    pub(super) fn time(&self, name: &'static str) -> ApiResult<Option<Timestamp>> {
        self.get(name).map(|v| Timestamp::parse_rfc3339(name, v).map_err(ApiError::from)).transpose()
    }

    pub(super) fn limit(&self) -> ApiResult<usize> {
        match self.get("limit") {
            None => Ok(20),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(format!("invalid limit: expected 1 to {MAX_LIMIT}, got {v:?}"))),
            },
        }
    }
}

pub(super) const LIST_PARAMS: [&str; 9] =
    ["limit", "cursor", "sort", "status", "priority", "agent_id", "parent_id", "created_after", "created_before"];

pub(super) fn task_query(params: &Params) -> ApiResult<TaskQuery> {
    let order = match params.get("sort") {
        None | Some("created_at") => SortOrder::Ascending,
        Some("-created_at") => SortOrder::Descending,
        Some(other) => {
            return Err(ApiError::invalid(format!("invalid sort: expected created_at or -created_at, got {other:?}")));
        }
    };
    let filter = TaskFilter {
        statuses: params.list::<TaskStatus>("status")?,
        priorities: params.list::<Priority>("priority")?,
        agent: params.get("agent_id").map(parse_agent_id).transpose()?,
        parent: params.get("parent_id").map(parse_task_id).transpose()?,
        created_after: params.time("created_after")?,
        created_before: params.time("created_before")?,
    };
    let cursor = params.get("cursor").map(|c| c.parse::<Cursor>()).transpose()?;
    Ok(TaskQuery { filter, order, limit: params.limit()?, cursor })
}

pub(super) fn session_id(raw: &str) -> ApiResult<SessionId> {
    let id = segment(raw)?;
    id.parse().map_err(|_| ApiError::invalid(format!("invalid session id: expected a UUID, got {id:?}")))
}
