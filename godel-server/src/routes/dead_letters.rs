//! `/dead-letters`: list, replay one, replay by filter, export as NDJSON.
//! Replays go through the orchestrator, which publishes them, checks the
//! budget and wakes the dispatcher.

use std::sync::Arc;

use godel_core::store::{SortOrder, TaskFilter, TaskQuery};
use godel_core::{TaskStatus, Timestamp};
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header;
use warp::hyper::body::Bytes;
use warp::reply::Response;

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::{ApiError, ApiResult, Code};
use crate::routes::{
    LIST_PARAMS, Params, body, ctx, ok, parse_agent_id, raw_query, respond, scope, task_id, task_query, with,
};
use crate::wire::{self, Page, TaskDto, parse_body};

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone()).and(ctx());
    let list = warp::path!("dead-letters")
        .and(warp::get())
        .and(s())
        .and(raw_query())
        .then(|s, c, q| respond(list_dead(s, c, q)));
    let replay_one = warp::path!("dead-letters" / String / "replay")
        .and(warp::post())
        .and(s())
        .then(|id, s, c| respond(replay_dead(s, c, id)));
    let replay_bulk = warp::path!("dead-letters" / "replay")
        .and(warp::post())
        .and(s())
        .and(body())
        .then(|s, c, b| respond(replay_dead_bulk(s, c, b)));
    let export = warp::path!("dead-letters" / "export")
        .and(warp::get())
        .and(s())
        .and(raw_query())
        .then(|s, c, q| respond(export_dead(s, c, q)));
    // Literal paths before the `{id}` ones they would otherwise match.
    replay_bulk.or(export).unify().or(list).unify().or(replay_one).unify().boxed()
}

async fn list_dead(state: Arc<AppState>, ctx: RequestContext, query: String) -> ApiResult {
    let params = Params::parse(&query, &LIST_PARAMS)?;
    let mut query = task_query(&params)?;
    if params.get("status").is_some() {
        return Err(ApiError::invalid("dead-letter listings take no status filter"));
    }
    query.filter.statuses = vec![TaskStatus::DeadLetter];
    let page = scope(&state, &ctx).list(&query).await?;
    ok(&Page {
        items: page.items.iter().map(TaskDto::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
        quarantined: wire::quarantined(&page.quarantined),
    })
}

async fn replay_dead(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let id = task_id(&id)?;
    let task = scope(&state, &ctx).replay_dead_letter(id).await?;
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

async fn replay_dead_bulk(state: Arc<AppState>, ctx: RequestContext, body: Bytes) -> ApiResult {
    // No body means no filter: replay every dead letter.
    let request: BulkReplay = if body.is_empty() { parse_body(b"{}")? } else { parse_body(&body)? };
    let filter = TaskFilter {
        statuses: Vec::new(),
        priorities: request.priority.iter().map(|p| p.parse()).collect::<Result<_, _>>()?,
        agent: request.agent_id.as_deref().map(parse_agent_id).transpose()?,
        parent: None,
        created_after: request.created_after.map(|t| Timestamp::parse_rfc3339("created_after", &t)).transpose()?,
        created_before: request.created_before.map(|t| Timestamp::parse_rfc3339("created_before", &t)).transpose()?,
    };
    let replayed = scope(&state, &ctx).replay_dead_letters(&filter).await?;
    ok(&json!({ "replayed": replayed }))
}

async fn export_dead(state: Arc<AppState>, ctx: RequestContext, query: String) -> ApiResult {
    let scope = scope(&state, &ctx);
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
        let page = scope.list(&query).await?;
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
