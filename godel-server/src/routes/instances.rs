//! `/instances`: the OpenClaw gateways of every node (list), registration
//! and deregistration through the API, and one gateway's health as this
//! node sees it. The gateway wiring itself is `crate::instances`.

use std::sync::Arc;

use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::hyper::body::Bytes;
use warp::reply::Response;

use crate::AppState;
use crate::error::{ApiError, ApiResult, Code};
use crate::instances::{self, Registration};
use crate::routes::{body, json_with, no_content, ok, respond, with};
use crate::wire::{opt_ts, parse_body};

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone());
    let list = warp::path!("instances").and(warp::get()).and(s()).then(|s| respond(list(s)));
    let register = warp::path!("instances").and(warp::post()).and(s()).and(body()).then(|s, b| respond(register(s, b)));
    let deregister =
        warp::path!("instances" / String).and(warp::delete()).and(s()).then(|name, s| respond(deregister(s, name)));
    let health =
        warp::path!("instances" / String / "health").and(warp::get()).and(s()).then(|name, s| respond(health(s, name)));
    // Literal paths before the `{name}` ones they would otherwise match.
    list.or(register).unify().or(health).unify().or(deregister).unify().boxed()
}

async fn list(state: Arc<AppState>) -> ApiResult {
    ok(&json!({ "items": instances::all_views(&state).await? }))
}

async fn register(state: Arc<AppState>, body: Bytes) -> ApiResult {
    let registration: Registration = parse_body(&body)?;
    registration.allowed(&state.gateways_api).map_err(|message| ApiError::new(Code::Forbidden, message))?;
    let config = registration.config().map_err(ApiError::invalid)?;
    if instances::is_registered(&state, &registration.name).await? {
        return Err(ApiError::new(Code::Conflict, format!("a gateway {} is already registered", registration.name)));
    }
    instances::put_registration(&state, &registration).await?;
    let snapshot = match instances::attach(&state, config) {
        Ok(snapshot) => snapshot,
        Err(e) => {
            // Raced with another registration of the name on this node.
            let _ = instances::remove_registration(&state, &registration.name).await;
            return Err(ApiError::new(Code::Conflict, e.to_string()));
        }
    };
    let mut reply = json_with(StatusCode::CREATED, &instances::local_view(&state, &snapshot));
    let location = format!("/api/v1/instances/{}", registration.name);
    if let Ok(value) = header::HeaderValue::from_str(&location) {
        reply.headers_mut().insert(header::LOCATION, value);
    }
    Ok(reply)
}

async fn deregister(state: Arc<AppState>, name: String) -> ApiResult {
    if state.configured_gateways.contains(&name) {
        return Err(ApiError::new(
            Code::Conflict,
            format!(
                "gateway {name} comes from godel.toml on node {}; remove it there",
                state.orchestrator.config().node
            ),
        ));
    }
    let removed = instances::remove_registration(&state, &name).await?;
    let detached = instances::detach(&state, &name);
    if !removed && !detached {
        return Err(ApiError::not_found(format!("gateway {name} not found")));
    }
    no_content()
}

async fn health(state: Arc<AppState>, name: String) -> ApiResult {
    let Some(g) = state.gateways.get(&name) else {
        return Err(ApiError::not_found(format!("gateway {name} is not connected from this node")));
    };
    let ready = g.state.as_str() == "ready";
    ok(&json!({
        "name": g.name,
        "ok": ready,
        "state": g.state.as_str(),
        "message": g.message,
        "last_check": opt_ts(g.last_check),
        "current_sessions": g.current_sessions,
        "max_sessions": g.max_sessions,
        "node": state.orchestrator.config().node,
    }))
}
