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
use crate::error::ApiResult;
use crate::routes::{Params, agent_id, json_with, ok, raw_query, respond, session_id, task_id, with};
use crate::wire::SessionDto;

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone());
    let list =
        warp::path!("sessions").and(warp::get()).and(s()).and(raw_query()).then(|s, q| respond(list_sessions(s, q)));
    let get = warp::path!("sessions" / String).and(warp::get()).and(s()).then(|id, s| respond(get_session(s, id)));
    let terminate = warp::path!("sessions" / String / "terminate")
        .and(warp::post())
        .and(s())
        .then(|id, s| respond(terminate_session(s, id)));
    // Literal paths before the `{id}` ones they would otherwise match.
    list.or(terminate).unify().or(get).unify().boxed()
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

async fn get_session(state: Arc<AppState>, id: String) -> ApiResult {
    let session = state.store().get_session(&state.tenant(), session_id(&id)?).await?;
    ok(&SessionDto::from(&session))
}

async fn terminate_session(state: Arc<AppState>, id: String) -> ApiResult {
    let (session, task) = state.orchestrator.terminate_session(session_id(&id)?).await?;
    Ok(json_with(StatusCode::ACCEPTED, &json!({ "session": SessionDto::from(&session), "task_id": task.to_string() })))
}
