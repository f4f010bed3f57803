//! `/agents`: list (this node's live, then the cluster's announced ones),
//! get, register a process agent, deregister, drain, heartbeat. Changes go
//! through the orchestrator, whose errors say whether the agent exists.

use std::sync::Arc;
use std::time::Duration;

use godel_core::adapter::ProcessAdapter;
use godel_core::task::validate_timeout;
use godel_core::{AgentConfig, AgentKind};
use serde_json::json;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::hyper::body::Bytes;
use warp::reply::Response;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::routes::{agent_id, body, json_with, no_content, ok, parse_agent_id, respond, with};
use crate::wire::{self, AgentDto, parse_body};

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone());
    let list = warp::path!("agents").and(warp::get()).and(s()).then(|s| respond(list_agents(s)));
    let get = warp::path!("agents" / String).and(warp::get()).and(s()).then(|id, s| respond(get_agent(s, id)));
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
    // Literal paths before the `{id}` ones they would otherwise match.
    let agents = list.or(register).unify().or(heartbeat).unify().or(drain).unify().or(get).unify();
    agents.or(deregister).unify().boxed()
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
    let agent = state.orchestrator.remove_agent(&id)?;
    let worker = state.workers.drain(&id);
    let active: Vec<String> = state.orchestrator.active_tasks(&id).iter().map(ToString::to_string).collect();
    Ok(json_with(
        StatusCode::ACCEPTED,
        &json!({ "id": agent.id, "draining": true, "worker": worker, "active_tasks": active }),
    ))
}

async fn register_agent(state: Arc<AppState>, body: Bytes) -> ApiResult {
    let request: wire::RegisterAgent = parse_body(&body)?;
    let id = parse_agent_id(&request.id)?;
    let process = ProcessAdapter::new(request.process_config()?)?;
    let mut config = AgentConfig::new(id.clone(), AgentKind::Process, Arc::new(process)).capacity(request.capacity);
    config.name = request.name.clone().unwrap_or_else(|| request.id.clone());
    config.capabilities = request.capabilities.clone();
    config.region = request.region.clone();
    if let Some(ms) = request.default_timeout_ms {
        let timeout = Duration::from_millis(ms);
        validate_timeout("default_timeout_ms", timeout)?;
        config.default_timeout = Some(timeout);
    }
    // Refused with AgentExists (409) when the id is taken, checked and added under one lock.
    let agent = state.orchestrator.add_agent(config)?;
    let mut reply = json_with(StatusCode::CREATED, &AgentDto::new(&agent, &[], &state.orchestrator.config().node));
    let location = format!("/api/v1/agents/{id}");
    reply.headers_mut().insert(header::LOCATION, header::HeaderValue::from_str(&location).expect("valid id"));
    Ok(reply)
}

async fn deregister_agent(state: Arc<AppState>, id: String) -> ApiResult {
    let id = agent_id(&id)?;
    state.orchestrator.remove_agent(&id)?;
    no_content()
}

async fn agent_heartbeat(state: Arc<AppState>, id: String) -> ApiResult {
    let id = agent_id(&id)?;
    state.orchestrator.agent_heartbeat(&id)?;
    no_content()
}
