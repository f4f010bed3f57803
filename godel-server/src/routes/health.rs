//! `/health`, `/health/live`, `/health/ready`: liveness, readiness with a
//! real store probe, and the deep report (store latency and the queue's
//! health).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::{ApiError, ApiResult, Code};
use crate::routes::queue::queue_report;
use crate::routes::{ctx, json_with, ok, respond, with};

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let live = warp::path!("health" / "live")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let ready = warp::path!("health" / "ready").and(warp::get()).and(with(state.clone())).then(|s| respond(ready(s)));
    let deep = warp::path!("health")
        .and(warp::get())
        .and(with(state.clone()))
        .and(ctx())
        .then(|s, c| respond(deep_health(s, c)));
    live.or(ready).unify().or(deep).unify().boxed()
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

async fn deep_health(state: Arc<AppState>, ctx: RequestContext) -> ApiResult {
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
    let queue = if store_error.is_none() { queue_report(&state, &ctx).await.ok() } else { None };
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
