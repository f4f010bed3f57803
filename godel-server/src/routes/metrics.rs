//! `/metrics`: the Prometheus (OpenMetrics) text, with the queue depth read
//! at scrape time.

use std::sync::Arc;

use godel_core::Timestamp;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::header;
use warp::reply::Response;

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::ApiResult;
use crate::routes::{ctx, respond, tenant, with};

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(with(state.clone()))
        .and(ctx())
        .then(|s, c| respond(metrics(s, c)))
        .boxed()
}

async fn metrics(state: Arc<AppState>, ctx: RequestContext) -> ApiResult {
    let depth = state.store().depth(&tenant(&state, &ctx), Timestamp::now()).await?;
    let text = state.metrics.render(&depth, &state.orchestrator.agents());
    let mut reply = Response::new(text.into());
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(reply)
}
