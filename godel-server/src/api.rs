//! The HTTP routes. Each handler returns `ApiResult<Response>`; errors become
//! the envelope in one place (`ApiError::into_response`). Every route under
//! `/api/v1` is also served under `/api` with `Deprecation` and `Sunset`
//! headers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use godel_core::adapter::ProcessAdapter;
use godel_core::store::{CancelOutcome, Cursor, SessionQuery, SortOrder, TaskFilter, TaskQuery};
use godel_core::{
    AgentConfig, AgentId, AgentKind, AgentStatus, Priority, SessionId, SessionState, TaskId, TaskStatus, Timestamp,
};
use serde_json::{Value, json};
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::hyper::body::Bytes;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::error::{ApiError, ApiResult, Code};
use crate::wire::{self, AgentDto, CreateBatch, CreateTask, Page, SessionDto, TaskDto, parse_body};

/// Largest request body accepted.
pub(crate) const MAX_BODY: u64 = 1 << 20;
/// Largest page a listing returns.
const MAX_LIMIT: usize = 100;
/// Most tasks in one batch.
const MAX_BATCH: usize = 1_000;
/// When the `/api` alias goes away (RFC 8594 `Sunset`).
const SUNSET: &str = "Fri, 01 Jan 2027 00:00:00 GMT";

/// Every route of the server.
pub(crate) fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let api = api_routes(state.clone());
    let v1 = warp::path!("api" / "v1" / ..).and(api.clone());
    let legacy = warp::path("api").and(api).map(|reply: Response| {
        let mut reply = reply;
        let headers = reply.headers_mut();
        headers.insert("Deprecation", header::HeaderValue::from_static("true"));
        headers.insert("Sunset", header::HeaderValue::from_static(SUNSET));
        headers.insert(header::LINK, header::HeaderValue::from_static("</api/v1>; rel=\"successor-version\""));
        reply
    });
    let health = health_routes(state.clone());
    let metrics = warp::path!("metrics").and(warp::get()).and(with(state.clone())).then(|s| respond(metrics(s)));
    let openapi = warp::path!("openapi.json").and(warp::get()).map(|| {
        let mut reply = Response::new(crate::OPENAPI.into());
        reply.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
        reply
    });
    let events = warp::path!("events").and(warp::ws()).and(raw_query()).and(with(state.clone())).map(
        |ws: warp::ws::Ws, query: String, state: Arc<AppState>| -> Response {
            let (resume, patterns) = match events_params(&query) {
                Ok(params) => params,
                Err(e) => return e.into_response(),
            };
            let tracker = state.connections.clone();
            ws.on_upgrade(move |socket| tracker.track_future(crate::events::serve(socket, state, resume, patterns)))
                .into_response()
        },
    );
    // Only under /api/v1: workers are new, so the deprecated /api alias never had them.
    let workers = warp::path!("api" / "v1" / "workers" / "connect").and(warp::ws()).and(with(state.clone())).map(
        |ws: warp::ws::Ws, state: Arc<AppState>| -> Response {
            let tracker = state.connections.clone();
            ws.on_upgrade(move |socket| tracker.track_future(crate::workers::serve(socket, state))).into_response()
        },
    );
    let routes = workers.or(v1).unify().or(legacy).unify().or(health).unify().or(metrics).unify();
    routes.or(openapi).unify().or(events).unify().boxed()
}

fn api_routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone());
    let create = warp::path!("tasks").and(warp::post()).and(s()).and(body()).then(|s, b| respond(create_task(s, b)));
    let batch =
        warp::path!("tasks" / "batch").and(warp::post()).and(s()).and(body()).then(|s, b| respond(create_batch(s, b)));
    let list = warp::path!("tasks").and(warp::get()).and(s()).and(raw_query()).then(|s, q| respond(list_tasks(s, q)));
    let get = warp::path!("tasks" / String).and(warp::get()).and(s()).then(|id, s| respond(get_task(s, id)));
    let delete = warp::path!("tasks" / String)
        .and(warp::delete())
        .and(s())
        .and(raw_query())
        .then(|id, s, q| respond(delete_task(s, id, q)));
    let cancel = warp::path!("tasks" / String / "cancel")
        .and(warp::post())
        .and(s())
        .then(|id, s| respond(stop_task(s, id, false)));
    let kill =
        warp::path!("tasks" / String / "kill").and(warp::post()).and(s()).then(|id, s| respond(stop_task(s, id, true)));
    let retry =
        warp::path!("tasks" / String / "retry").and(warp::post()).and(s()).then(|id, s| respond(retry_task(s, id)));
    let events =
        warp::path!("tasks" / String / "events").and(warp::get()).and(s()).then(|id, s| respond(task_events(s, id)));

    let depth = warp::path!("queue" / "depth").and(warp::get()).and(s()).then(|s| respond(queue_depth(s)));
    let queue_health = warp::path!("queue" / "health").and(warp::get()).and(s()).then(|s| respond(queue_health(s)));

    let dlq_list =
        warp::path!("dead-letters").and(warp::get()).and(s()).and(raw_query()).then(|s, q| respond(list_dead(s, q)));
    let dlq_replay_one = warp::path!("dead-letters" / String / "replay")
        .and(warp::post())
        .and(s())
        .then(|id, s| respond(replay_dead(s, id)));
    let dlq_replay_bulk = warp::path!("dead-letters" / "replay")
        .and(warp::post())
        .and(s())
        .and(body())
        .then(|s, b| respond(replay_dead_bulk(s, b)));
    let dlq_export = warp::path!("dead-letters" / "export")
        .and(warp::get())
        .and(s())
        .and(raw_query())
        .then(|s, q| respond(export_dead(s, q)));

    let agents = warp::path!("agents").and(warp::get()).and(s()).then(|s| respond(list_agents(s)));
    let agent = warp::path!("agents" / String).and(warp::get()).and(s()).then(|id, s| respond(get_agent(s, id)));
    let register =
        warp::path!("agents").and(warp::post()).and(s()).and(body()).then(|s, b| respond(register_agent(s, b)));
    let deregister =
        warp::path!("agents" / String).and(warp::delete()).and(s()).then(|id, s| respond(deregister_agent(s, id)));
    let heartbeat = warp::path!("agents" / String / "heartbeat")
        .and(warp::post())
        .and(s())
        .then(|id, s| respond(agent_heartbeat(s, id)));
    let drain =
        warp::path!("agents" / String / "drain").and(warp::post()).and(s()).then(|id, s| respond(drain_agent(s, id)));

    let instances = warp::path!("instances").and(warp::get()).and(s()).then(|s| respond(crate::instances::list(s)));
    let register_instance = warp::path!("instances")
        .and(warp::post())
        .and(s())
        .and(body())
        .then(|s, b| respond(crate::instances::register(s, b)));
    let deregister_instance = warp::path!("instances" / String)
        .and(warp::delete())
        .and(s())
        .then(|name, s| respond(crate::instances::deregister(s, name)));
    let instance_health = warp::path!("instances" / String / "health")
        .and(warp::get())
        .and(s())
        .then(|name, s| respond(crate::instances::health(s, name)));

    let sessions =
        warp::path!("sessions").and(warp::get()).and(s()).and(raw_query()).then(|s, q| respond(list_sessions(s, q)));
    let session = warp::path!("sessions" / String).and(warp::get()).and(s()).then(|id, s| respond(get_session(s, id)));
    let terminate = warp::path!("sessions" / String / "terminate")
        .and(warp::post())
        .and(s())
        .then(|id, s| respond(terminate_session(s, id)));

    // Literal paths before the `{id}` ones they would otherwise match.
    let tasks = batch.or(create).unify().or(list).unify().or(events).unify().or(cancel).unify();
    let tasks = tasks.or(kill).unify().or(retry).unify().or(get).unify().or(delete).unify();
    let queue = depth.or(queue_health).unify();
    let dlq = dlq_replay_bulk.or(dlq_export).unify().or(dlq_list).unify().or(dlq_replay_one).unify();
    let agents = agents.or(register).unify().or(heartbeat).unify().or(drain).unify().or(agent).unify();
    let agents = agents.or(deregister).unify();
    let sessions = sessions.or(terminate).unify().or(session).unify();
    let instances = instances.or(register_instance).unify().or(instance_health).unify().or(deregister_instance).unify();
    let routes = tasks.or(queue).unify().or(dlq).unify().or(agents).unify().or(sessions).unify();
    routes.or(instances).unify().boxed()
}

fn health_routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let ready = warp::path!("health" / "ready").and(warp::get()).and(with(state.clone())).then(|s| respond(ready(s)));
    let deep = warp::path!("health").and(warp::get()).and(with(state)).then(|s| respond(deep_health(s)));
    live.or(ready).unify().or(deep).unify().boxed()
}

fn with(state: Arc<AppState>) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The request body, at most [`MAX_BODY`] bytes. A request without
/// `Content-Length` and without a chunked body has an empty body (what
/// `curl -X POST` sends); a chunked one is refused with 411.
fn body() -> impl Filter<Extract = (Bytes,), Error = warp::Rejection> + Clone {
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

fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

async fn respond(result: impl std::future::Future<Output = ApiResult>) -> Response {
    result.await.unwrap_or_else(ApiError::into_response)
}

fn json_with(status: StatusCode, value: &impl serde::Serialize) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn ok(value: &impl serde::Serialize) -> ApiResult {
    Ok(json_with(StatusCode::OK, value))
}

fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn task_id(raw: &str) -> ApiResult<TaskId> {
    raw.parse().map_err(|_| ApiError::invalid(format!("invalid task id: expected a UUID, got {raw:?}")))
}

fn agent_id(raw: &str) -> ApiResult<AgentId> {
    AgentId::new(raw).map_err(ApiError::from)
}

/// Query parameters, checked one by one; unknown names are errors.
struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    fn parse(raw: &str, known: &[&str]) -> ApiResult<Self> {
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

    fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    fn list<T: std::str::FromStr<Err = godel_core::InvalidInput>>(&self, name: &str) -> ApiResult<Vec<T>> {
        match self.get(name) {
            None => Ok(Vec::new()),
            Some(v) => v.split(',').filter(|s| !s.is_empty()).map(|s| s.parse().map_err(ApiError::from)).collect(),
        }
    }

    fn time(&self, name: &'static str) -> ApiResult<Option<Timestamp>> {
        self.get(name).map(|v| Timestamp::parse_rfc3339(name, v).map_err(ApiError::from)).transpose()
    }

    fn limit(&self) -> ApiResult<usize> {
        match self.get("limit") {
            None => Ok(20),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
                _ => Err(ApiError::invalid(format!("invalid limit: expected 1 to {MAX_LIMIT}, got {v:?}"))),
            },
        }
    }
}

const LIST_PARAMS: [&str; 9] =
    ["limit", "cursor", "sort", "status", "priority", "agent_id", "parent_id", "created_after", "created_before"];

fn task_query(params: &Params) -> ApiResult<TaskQuery> {
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
        agent: params.get("agent_id").map(agent_id).transpose()?,
        parent: params.get("parent_id").map(task_id).transpose()?,
        created_after: params.time("created_after")?,
        created_before: params.time("created_before")?,
    };
    let cursor = params.get("cursor").map(|c| c.parse::<Cursor>()).transpose()?;
    Ok(TaskQuery { filter, order, limit: params.limit()?, cursor })
}

async fn create_task(state: Arc<AppState>, body: Bytes) -> ApiResult {
    let request: CreateTask = parse_body(&body)?;
    let new = request.into_new_task(Timestamp::now())?;
    let enqueued = state.orchestrator.enqueue(new).await?;
    let task = enqueued.task;
    // A repeated idempotency key returns the first task: 200, not 201.
    let status = if enqueued.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut reply = json_with(status, &TaskDto::from(&task));
    let location = format!("/api/v1/tasks/{}", task.id);
    reply.headers_mut().insert(header::LOCATION, header::HeaderValue::from_str(&location).expect("ascii"));
    Ok(reply)
}

async fn create_batch(state: Arc<AppState>, body: Bytes) -> ApiResult {
    let request: CreateBatch = parse_body(&body)?;
    if request.tasks.is_empty() || request.tasks.len() > MAX_BATCH {
        return Err(ApiError::invalid(format!(
            "invalid tasks: expected 1 to {MAX_BATCH} tasks, got {}",
            request.tasks.len()
        )));
    }
    let now = Timestamp::now();
    let tasks = request
        .tasks
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.into_new_task(now).map_err(|e| ApiError::new(e.code, format!("tasks[{i}]: {}", e.message))))
        .collect::<ApiResult<Vec<_>>>()?;
    let created = state.orchestrator.submit_batch(tasks).await?;
    let items: Vec<TaskDto> = created.iter().map(TaskDto::from).collect();
    Ok(json_with(StatusCode::CREATED, &json!({ "tasks": items })))
}

async fn list_tasks(state: Arc<AppState>, query: String) -> ApiResult {
    let params = Params::parse(&query, &LIST_PARAMS)?;
    let query = task_query(&params)?;
    let page = state.store().list(&state.tenant(), &query).await?;
    ok(&Page {
        items: page.items.iter().map(TaskDto::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
}

async fn get_task(state: Arc<AppState>, id: String) -> ApiResult {
    let task = state.store().get(&state.tenant(), task_id(&id)?).await?;
    ok(&TaskDto::from(&task))
}

async fn delete_task(state: Arc<AppState>, id: String, query: String) -> ApiResult {
    let params = Params::parse(&query, &["purge"])?;
    let id = task_id(&id)?;
    match params.get("purge") {
        Some("true") => {
            state.store().purge(&state.tenant(), id).await?;
            no_content()
        }
        _ => Err(ApiError::invalid(
            "DELETE removes a finished task and needs ?purge=true; to stop a task use POST /api/v1/tasks/{id}/cancel",
        )),
    }
}

async fn stop_task(state: Arc<AppState>, id: String, force: bool) -> ApiResult {
    let id = task_id(&id)?;
    let outcome = if force { state.orchestrator.kill(id).await? } else { state.orchestrator.cancel(id).await? };
    let task = state.store().get(&state.tenant(), id).await?;
    let outcome = match outcome {
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Requested => "cancel_requested",
    };
    ok(&json!({ "outcome": outcome, "task": TaskDto::from(&task) }))
}

async fn retry_task(state: Arc<AppState>, id: String) -> ApiResult {
    let task = state.store().replay(&state.tenant(), task_id(&id)?, Timestamp::now()).await?;
    state.orchestrator.wake();
    ok(&TaskDto::from(&task))
}

async fn task_events(state: Arc<AppState>, id: String) -> ApiResult {
    let id = task_id(&id)?;
    let (store, tenant) = (state.store(), state.tenant());
    let history = store.history(&tenant, id).await?;
    let output = store.output(&tenant, id).await?;
    ok(&json!({ "items": wire::history_json(&history, &output) }))
}

async fn queue_depth(state: Arc<AppState>) -> ApiResult {
    let depth = state.store().depth(&state.tenant(), Timestamp::now()).await?;
    ok(&wire::depth_json(&depth))
}

/// How long the head of the queue may wait before the queue counts as degraded.
const SLOW_QUEUE: Duration = Duration::from_secs(60);

async fn queue_health(state: Arc<AppState>) -> ApiResult {
    ok(&queue_report(&state).await?)
}

async fn queue_report(state: &AppState) -> ApiResult<Value> {
    let now = Timestamp::now();
    let counts = state.store().counts(&state.tenant(), now).await?;
    let depth = state.store().depth(&state.tenant(), now).await?;
    let agents = state.orchestrator.agents();
    let online: Vec<_> = agents.iter().filter(|a| matches!(a.status, AgentStatus::Idle | AgentStatus::Busy)).collect();
    let free: u32 = online.iter().map(|a| a.free_capacity()).sum();
    let oldest_age = counts.oldest_ready.map(|t| now.saturating_since(t));
    let mut reasons: Vec<String> = Vec::new();
    let mut unhealthy = false;
    if counts.ready > 0 && online.is_empty() {
        unhealthy = true;
        reasons.push(format!("{} ready tasks and no agent online", counts.ready));
    }
    if counts.ready > 0 && !online.is_empty() && free == 0 {
        reasons.push(format!("every agent is at capacity; {} ready tasks wait", counts.ready));
    }
    if let Some(age) = oldest_age.filter(|a| *a > SLOW_QUEUE) {
        reasons.push(format!("the oldest ready task has waited {}s", age.as_secs()));
    }
    if counts.expired_leases > 0 {
        reasons.push(format!(
            "{} tasks hold expired leases (a node may have died); they will be reclaimed",
            counts.expired_leases
        ));
    }
    let dead = counts.status(TaskStatus::DeadLetter);
    if dead > 0 {
        reasons.push(format!("{dead} tasks are dead-lettered"));
    }
    reasons.extend(state.gateways.queue_reasons(counts.ready));
    let offline = agents.len() - online.len();
    if offline > 0 {
        reasons.push(format!("{offline} of {} agents are offline or in error", agents.len()));
    }
    let status = if unhealthy {
        "unhealthy"
    } else if reasons.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    Ok(json!({
        "status": status,
        "reasons": reasons,
        "pending": counts.status(TaskStatus::Pending),
        "ready": counts.ready,
        "scheduled": counts.scheduled,
        "assigned": counts.status(TaskStatus::Assigned),
        "running": counts.status(TaskStatus::Running),
        "completed": counts.status(TaskStatus::Completed),
        "failed": counts.status(TaskStatus::Failed),
        "cancelled": counts.status(TaskStatus::Cancelled),
        "dead_letters": dead,
        "stale_leases": counts.expired_leases,
        "oldest_pending_age_ms": oldest_age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        "completed_last_minute": state.metrics.completed_last_minute(),
        "depth": wire::depth_json(&depth),
        "agents": { "total": agents.len(), "online": online.len(), "free_slots": free },
    }))
}

async fn list_dead(state: Arc<AppState>, query: String) -> ApiResult {
    let params = Params::parse(&query, &LIST_PARAMS)?;
    let mut query = task_query(&params)?;
    if params.get("status").is_some() {
        return Err(ApiError::invalid("dead-letter listings take no status filter"));
    }
    query.filter.statuses = vec![TaskStatus::DeadLetter];
    let page = state.store().list(&state.tenant(), &query).await?;
    ok(&Page {
        items: page.items.iter().map(TaskDto::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
}

async fn replay_dead(state: Arc<AppState>, id: String) -> ApiResult {
    let id = task_id(&id)?;
    let (store, tenant) = (state.store(), state.tenant());
    let task = store.get(&tenant, id).await?;
    if task.status != TaskStatus::DeadLetter {
        return Err(ApiError::new(Code::Conflict, format!("task {id} is {}, not dead-lettered", task.status)));
    }
    let task = store.replay(&tenant, id, Timestamp::now()).await?;
    state.orchestrator.wake();
    ok(&TaskDto::from(&task))
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct BulkReplay {
    #[serde(default)]
    priority: Vec<String>,
    agent_id: Option<String>,
    created_after: Option<String>,
    created_before: Option<String>,
}

async fn replay_dead_bulk(state: Arc<AppState>, body: Bytes) -> ApiResult {
    // No body means no filter: replay every dead letter.
    let request: BulkReplay = if body.is_empty() { parse_body(b"{}")? } else { parse_body(&body)? };
    let filter = TaskFilter {
        statuses: Vec::new(),
        priorities: request.priority.iter().map(|p| p.parse()).collect::<Result<_, _>>()?,
        agent: request.agent_id.as_deref().map(agent_id).transpose()?,
        parent: None,
        created_after: request.created_after.map(|t| Timestamp::parse_rfc3339("created_after", &t)).transpose()?,
        created_before: request.created_before.map(|t| Timestamp::parse_rfc3339("created_before", &t)).transpose()?,
    };
    let replayed = state.store().replay_dead_letters(&state.tenant(), &filter, Timestamp::now()).await?;
    state.orchestrator.wake();
    ok(&json!({ "replayed": replayed }))
}

async fn export_dead(state: Arc<AppState>, query: String) -> ApiResult {
    let params = Params::parse(&query, &["priority", "created_after", "created_before"])?;
    let filter = TaskFilter {
        statuses: vec![TaskStatus::DeadLetter],
        priorities: params.list("priority")?,
        created_after: params.time("created_after")?,
        created_before: params.time("created_before")?,
        ..TaskFilter::default()
    };
    let mut out = String::new();
    let mut cursor = None;
    loop {
        let query = TaskQuery { filter: filter.clone(), order: SortOrder::Ascending, limit: 1_000, cursor };
        let page = state.store().list(&state.tenant(), &query).await?;
        for task in &page.items {
            out.push_str(
                &serde_json::to_string(&TaskDto::from(task))
                    .map_err(|e| ApiError::new(Code::InternalError, e.to_string()))?,
            );
            out.push('\n');
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut reply = Response::new(out.into());
    let headers = reply.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-ndjson"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        header::HeaderValue::from_static("attachment; filename=\"dead-letters.ndjson\""),
    );
    Ok(reply)
}

/// This node's agents, live, then those other nodes sharing the store announced.
async fn all_agents(state: &AppState) -> ApiResult<Vec<AgentDto>> {
    let node = &state.orchestrator.config().node;
    let mut items: Vec<AgentDto> = state
        .orchestrator
        .agents()
        .iter()
        .map(|a| AgentDto::new(a, &state.orchestrator.active_tasks(&a.id), node))
        .collect();
    for other in state.orchestrator.cluster_agents().await? {
        if other.node != *node {
            items.push(AgentDto::new(&other.agent, &[], &other.node));
        }
    }
    Ok(items)
}

async fn list_agents(state: Arc<AppState>) -> ApiResult {
    ok(&json!({ "items": all_agents(&state).await? }))
}

async fn get_agent(state: Arc<AppState>, id: String) -> ApiResult {
    let id = agent_id(&id)?;
    let agent = all_agents(&state).await?.into_iter().find(|a| a.id() == id.as_str());
    ok(&agent.ok_or_else(|| ApiError::not_found(format!("agent {id} not found")))?)
}

/// Stops giving an agent of this node work; it finishes what it runs. A
/// connected worker is also told to leave once it is done.
async fn drain_agent(state: Arc<AppState>, id: String) -> ApiResult {
    let id = agent_id(&id)?;
    let agent = state.orchestrator.agents().into_iter().find(|a| a.id == id);
    let agent = agent.ok_or_else(|| ApiError::not_found(format!("agent {id} is not on this node")))?;
    state.orchestrator.remove_agent(&id).map_err(|e| ApiError::not_found(e.reason))?;
    let worker = state.workers.drain(&id);
    let active: Vec<String> = state.orchestrator.active_tasks(&id).iter().map(ToString::to_string).collect();
    Ok(json_with(
        StatusCode::ACCEPTED,
        &json!({ "id": agent.id, "draining": true, "worker": worker, "active_tasks": active }),
    ))
}

async fn register_agent(state: Arc<AppState>, body: Bytes) -> ApiResult {
    let request: wire::RegisterAgent = parse_body(&body)?;
    let id = agent_id(&request.id)?;
    let process = ProcessAdapter::new(request.process_config()?)?;
    let mut config = AgentConfig::new(id.clone(), AgentKind::Process, Arc::new(process)).capacity(request.capacity);
    config.name = request.name.clone().unwrap_or_else(|| request.id.clone());
    config.capabilities = request.capabilities.clone();
    config.region = request.region.clone();
    if let Some(ms) = request.default_timeout_ms {
        if ms == 0 {
            return Err(ApiError::invalid("invalid default_timeout_ms: expected a positive number"));
        }
        config.default_timeout = Some(Duration::from_millis(ms));
    }
    let taken = || ApiError::new(Code::Conflict, format!("an agent {id} is already registered"));
    if state.orchestrator.agents().iter().any(|a| a.id == id) {
        return Err(taken());
    }
    // The configuration was checked above, so a refusal here can only be a
    // registration of the same id that won a race with this one.
    let agent = state.orchestrator.add_agent(config).map_err(|_| taken())?;
    let mut reply = json_with(StatusCode::CREATED, &AgentDto::new(&agent, &[], &state.orchestrator.config().node));
    let location = format!("/api/v1/agents/{id}");
    reply.headers_mut().insert(header::LOCATION, header::HeaderValue::from_str(&location).expect("valid id"));
    Ok(reply)
}

async fn deregister_agent(state: Arc<AppState>, id: String) -> ApiResult {
    let id = agent_id(&id)?;
    state.orchestrator.remove_agent(&id).map_err(|e| ApiError::not_found(e.reason))?;
    no_content()
}

async fn agent_heartbeat(state: Arc<AppState>, id: String) -> ApiResult {
    let id = agent_id(&id)?;
    state.orchestrator.agent_heartbeat(&id).map_err(|e| ApiError::not_found(e.reason))?;
    no_content()
}

async fn list_sessions(state: Arc<AppState>, query: String) -> ApiResult {
    let params = Params::parse(&query, &["limit", "state", "agent_id", "task_id"])?;
    let query = SessionQuery {
        states: params.list::<SessionState>("state")?,
        agent: params.get("agent_id").map(agent_id).transpose()?,
        task: params.get("task_id").map(task_id).transpose()?,
        limit: params.limit()?,
    };
    let sessions = state.store().list_sessions(&state.tenant(), &query).await?;
    ok(&json!({ "items": sessions.iter().map(SessionDto::from).collect::<Vec<_>>() }))
}

fn session_id(raw: &str) -> ApiResult<SessionId> {
    raw.parse().map_err(|_| ApiError::invalid(format!("invalid session id: expected a UUID, got {raw:?}")))
}

async fn get_session(state: Arc<AppState>, id: String) -> ApiResult {
    let session = state.store().get_session(&state.tenant(), session_id(&id)?).await?;
    ok(&SessionDto::from(&session))
}

async fn terminate_session(state: Arc<AppState>, id: String) -> ApiResult {
    let session = state.store().get_session(&state.tenant(), session_id(&id)?).await?;
    let task = match session.task {
        Some(task) if !session.state.is_terminal() => task,
        _ => {
            return Err(ApiError::new(
                Code::Conflict,
                format!("session {} is {}, nothing to terminate", session.id, session.state),
            ));
        }
    };
    state.orchestrator.kill(task).await?;
    Ok(json_with(StatusCode::ACCEPTED, &json!({ "session": SessionDto::from(&session), "task_id": task.to_string() })))
}

async fn ready(state: Arc<AppState>) -> ApiResult {
    if let Some(reason) = state.not_ready() {
        return Err(ApiError::new(Code::ServiceUnavailable, reason));
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store().ping()).await {
        Ok(Ok(())) => ok(&json!({ "status": "ready" })),
        Ok(Err(e)) => Err(ApiError::new(Code::ServiceUnavailable, format!("store unreachable: {e}"))),
        Err(_) => Err(ApiError::new(Code::ServiceUnavailable, "store did not answer within 2 s")),
    }
}

async fn deep_health(state: Arc<AppState>) -> ApiResult {
    let started = Instant::now();
    let probe = tokio::time::timeout(Duration::from_secs(2), state.store().ping()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let store_error = match probe {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("no answer within 2 s".to_owned()),
    };
    let store = json!({
        "backend": state.store().backend(),
        "ok": store_error.is_none(),
        "latency_ms": latency_ms,
        "error": store_error,
    });
    let queue = if store_error.is_none() { queue_report(&state).await.ok() } else { None };
    let status = match (&store_error, &queue) {
        (Some(_), _) => "unhealthy",
        (None, Some(q)) => q["status"].as_str().unwrap_or("degraded"),
        (None, None) => "degraded",
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started.elapsed().as_secs(),
        "ready": state.not_ready().is_none(),
        "store": store,
        "queue": queue,
    });
    let code = if status == "unhealthy" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    Ok(json_with(code, &body))
}

async fn metrics(state: Arc<AppState>) -> ApiResult {
    let depth = state.store().depth(&state.tenant(), Timestamp::now()).await?;
    let text = state.metrics.render(&depth, &state.orchestrator.agents());
    let mut reply = Response::new(text.into());
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(reply)
}

fn events_params(query: &str) -> ApiResult<(crate::events::Resume, Vec<godel_core::EventPattern>)> {
    let params = Params::parse(query, &["since", "epoch", "patterns"])?;
    let since = params
        .get("since")
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| ApiError::invalid(format!("invalid since: expected a sequence number, got {s:?}")))
        })
        .transpose()?;
    let patterns = crate::events::parse_patterns(params.get("patterns").unwrap_or("")).map_err(ApiError::invalid)?;
    Ok((crate::events::Resume { since, epoch: params.get("epoch").map(str::to_owned) }, patterns))
}
