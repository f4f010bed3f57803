//! `/tasks`: submit (one or a batch), list, get, cancel, kill, retry, purge,
//! and a task's history. Every change goes through the orchestrator.

use std::sync::Arc;

use godel_core::Timestamp;
use godel_core::store::CancelOutcome;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::hyper::body::Bytes;
use warp::reply::Response;

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::{ApiError, ApiResult};
use crate::routes::{
    LIST_PARAMS, Params, body, ctx, json_with, no_content, ok, raw_query, respond, scope, task_id, task_query, tenant,
    with,
};
use crate::wire::{self, CreateBatch, CreateTask, Page, TaskDto, parse_body};

/// Most tasks in one batch.
const MAX_BATCH: usize = 1_000;

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone()).and(ctx());
    let create =
        warp::path!("tasks").and(warp::post()).and(s()).and(body()).then(|s, c, b| respond(create_task(s, c, b)));
    let batch = warp::path!("tasks" / "batch")
        .and(warp::post())
        .and(s())
        .and(body())
        .then(|s, c, b| respond(create_batch(s, c, b)));
    let list =
        warp::path!("tasks").and(warp::get()).and(s()).and(raw_query()).then(|s, c, q| respond(list_tasks(s, c, q)));
    let get = warp::path!("tasks" / String).and(warp::get()).and(s()).then(|id, s, c| respond(get_task(s, c, id)));
    let delete = warp::path!("tasks" / String)
        .and(warp::delete())
        .and(s())
        .and(raw_query())
        .then(|id, s, c, q| respond(delete_task(s, c, id, q)));
    let cancel = warp::path!("tasks" / String / "cancel")
        .and(warp::post())
        .and(s())
        .then(|id, s, c| respond(stop_task(s, c, id, false)));
    let kill = warp::path!("tasks" / String / "kill")
        .and(warp::post())
        .and(s())
        .then(|id, s, c| respond(stop_task(s, c, id, true)));
    let retry = warp::path!("tasks" / String / "retry")
        .and(warp::post())
        .and(s())
        .then(|id, s, c| respond(retry_task(s, c, id)));
    let events = warp::path!("tasks" / String / "events")
        .and(warp::get())
        .and(s())
        .then(|id, s, c| respond(task_events(s, c, id)));
    // Literal paths before the `{id}` ones they would otherwise match.
    let tasks = batch.or(create).unify().or(list).unify().or(events).unify().or(cancel).unify();
    tasks.or(kill).unify().or(retry).unify().or(get).unify().or(delete).unify().boxed()
}

async fn create_task(state: Arc<AppState>, ctx: RequestContext, body: Bytes) -> ApiResult {
    let request: CreateTask = parse_body(&body)?;
    let new = request.into_new_task(Timestamp::now())?;
    let enqueued = scope(&state, &ctx).enqueue(new).await?;
    let task = enqueued.task;
    // A repeated idempotency key returns the first task: 200, not 201.
    let status = if enqueued.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut reply = json_with(status, &TaskDto::from(&task));
    let location = format!("/api/v1/tasks/{}", task.id);
    reply.headers_mut().insert(header::LOCATION, header::HeaderValue::from_str(&location).expect("ascii"));
    Ok(reply)
}

async fn create_batch(state: Arc<AppState>, ctx: RequestContext, body: Bytes) -> ApiResult {
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
    let created = scope(&state, &ctx).submit_batch(tasks).await?;
    let items: Vec<TaskDto> = created.iter().map(TaskDto::from).collect();
    Ok(json_with(StatusCode::CREATED, &json!({ "tasks": items })))
}

async fn list_tasks(state: Arc<AppState>, ctx: RequestContext, query: String) -> ApiResult {
    let params = Params::parse(&query, &LIST_PARAMS)?;
    let query = task_query(&params)?;
    let page = scope(&state, &ctx).list(&query).await?;
    ok(&Page {
        items: page.items.iter().map(TaskDto::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
        quarantined: wire::quarantined(&page.quarantined),
    })
}

async fn get_task(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let task = state.store().get(&tenant(&state, &ctx), task_id(&id)?).await?;
    ok(&TaskDto::from(&task))
}

async fn delete_task(state: Arc<AppState>, ctx: RequestContext, id: String, query: String) -> ApiResult {
    let params = Params::parse(&query, &["purge"])?;
    let id = task_id(&id)?;
    match params.get("purge") {
        Some("true") => {
            scope(&state, &ctx).purge(id).await?;
            no_content()
        }
        _ => Err(ApiError::invalid(
            "DELETE removes a finished task and needs ?purge=true; to stop a task use POST /api/v1/tasks/{id}/cancel",
        )),
    }
}

async fn stop_task(state: Arc<AppState>, ctx: RequestContext, id: String, force: bool) -> ApiResult {
    let id = task_id(&id)?;
    let scope = scope(&state, &ctx);
    let outcome = if force { scope.kill(id).await? } else { scope.cancel(id).await? };
    let task = scope.get(id).await?;
    let outcome = match outcome {
        CancelOutcome::Cancelled => "cancelled",
        CancelOutcome::Requested => "cancel_requested",
    };
    ok(&json!({ "outcome": outcome, "task": TaskDto::from(&task) }))
}

async fn retry_task(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let id = task_id(&id)?;
    let task = scope(&state, &ctx).retry(id).await?;
    ok(&TaskDto::from(&task))
}

async fn task_events(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let id = task_id(&id)?;
    let (store, tenant) = (state.store(), tenant(&state, &ctx));
    let history = store.history(&tenant, id).await?;
    let output = store.output(&tenant, id).await?;
    ok(&json!({ "items": wire::history_json(&history, &output) }))
}
