//! `/queue`: depth per priority and the queue's health report (which the
//! deep health check embeds).

use std::sync::Arc;
use std::time::Duration;

use godel_core::{AgentStatus, TaskStatus, Timestamp};
use serde_json::{Value, json};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::ApiResult;
use crate::routes::{ctx, ok, respond, tenant, with};
use crate::wire;

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone()).and(ctx());
    let depth = warp::path!("queue" / "depth").and(warp::get()).and(s()).then(|s, c| respond(queue_depth(s, c)));
    let health = warp::path!("queue" / "health").and(warp::get()).and(s()).then(|s, c| respond(queue_health(s, c)));
    depth.or(health).unify().boxed()
}

async fn queue_depth(state: Arc<AppState>, ctx: RequestContext) -> ApiResult {
    let depth = state.store().depth(&tenant(&state, &ctx), Timestamp::now()).await?;
    ok(&wire::depth_json(&depth))
}

/// How long the head of the queue may wait before the queue counts as degraded.
const SLOW_QUEUE: Duration = Duration::from_secs(60);

async fn queue_health(state: Arc<AppState>, ctx: RequestContext) -> ApiResult {
    ok(&queue_report(&state, &ctx).await?)
}

pub(super) async fn queue_report(state: &AppState, ctx: &RequestContext) -> ApiResult<Value> {
    let now = Timestamp::now();
    let tenant = tenant(state, ctx);
    let counts = state.store().counts(&tenant, now).await?;
    let depth = state.store().depth(&tenant, now).await?;
    let agents = state.orchestrator.agents();
    let online: Vec<_> = agents.iter().filter(|a| matches!(a.status, AgentStatus::Idle | AgentStatus::Busy)).collect();
    // Summed wide: many agents of large capacity must not wrap to "no free slot".
    let free: u64 = online.iter().map(|a| u64::from(a.free_capacity())).sum();
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
    if counts.quarantined > 0 {
        reasons.push(format!(
            "{} task rows do not decode and are quarantined; inspect them with `godel quarantine list`",
            counts.quarantined
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
        "quarantined": counts.quarantined,
        "oldest_pending_age_ms": oldest_age.map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
        "completed_last_minute": state.metrics.completed_last_minute(),
        "depth": wire::depth_json(&depth),
        "agents": { "total": agents.len(), "online": online.len(), "free_slots": free },
    }))
}
