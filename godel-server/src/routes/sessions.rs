//! `/sessions`: list, get, terminate (which kills the session's task
//! through the orchestrator).

use std::sync::Arc;

use godel_core::SessionState;
use godel_core::store::SessionQuery;
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::ApiResult;
use crate::routes::{
    Params, ctx, json_with, ok, parse_agent_id, parse_task_id, raw_query, respond, scope, session_id, tenant, with,
};
use crate::wire::SessionDto;

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone()).and(ctx());
    let list = warp::path!("sessions")
        .and(warp::get())
        .and(s())
        .and(raw_query())
        .then(|s, c, q| respond(list_sessions(s, c, q)));
    let get =
        warp::path!("sessions" / String).and(warp::get()).and(s()).then(|id, s, c| respond(get_session(s, c, id)));
    let terminate = warp::path!("sessions" / String / "terminate")
        .and(warp::post())
        .and(s())
        .then(|id, s, c| respond(terminate_session(s, c, id)));
    // Literal paths before the `{id}` ones they would otherwise match.
    list.or(terminate).unify().or(get).unify().boxed()
}

async fn list_sessions(state: Arc<AppState>, ctx: RequestContext, query: String) -> ApiResult {
    let params = Params::parse(&query, &["limit", "state", "agent_id", "task_id"])?;
    let query = SessionQuery {
        states: params.list::<SessionState>("state")?,
        agent: params.get("agent_id").map(parse_agent_id).transpose()?,
        task: params.get("task_id").map(parse_task_id).transpose()?,
        limit: params.limit()?,
    };
    let sessions = state.store().list_sessions(&tenant(&state, &ctx), &query).await?;
    ok(&json!({ "items": sessions.iter().map(SessionDto::from).collect::<Vec<_>>() }))
}

async fn get_session(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let session = state.store().get_session(&tenant(&state, &ctx), session_id(&id)?).await?;
    ok(&SessionDto::from(&session))
}

async fn terminate_session(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let (session, task) = scope(&state, &ctx).terminate_session(session_id(&id)?).await?;
    Ok(json_with(StatusCode::ACCEPTED, &json!({ "session": SessionDto::from(&session), "task_id": task.to_string() })))
}
