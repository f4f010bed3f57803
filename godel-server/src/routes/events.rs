//! `/events`: the WebSocket upgrade, with its query (`since`, `epoch`,
//! `patterns`) checked before it; the protocol itself is `crate::events`.

use std::sync::Arc;

use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::{ApiError, ApiResult};
use crate::routes::{Params, ctx, raw_query, tenant, upgrade_required, with};

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    warp::path!("events")
        .and(warp::ws())
        .and(raw_query())
        .and(with(state.clone()))
        .and(ctx())
        .map(|ws: warp::ws::Ws, query: String, state: Arc<AppState>, ctx: RequestContext| -> Response {
            let (resume, patterns) = match events_params(&query) {
                Ok(params) => params,
                Err(e) => return e.into_response(),
            };
            // A subscriber sees its own tenant's events: an admin sees another
            // tenant's only through /api/v1/tenants/{tenant}/events.
            let tenant = tenant(&state, &ctx);
            let tracker = state.connections.clone();
            ws.on_upgrade(move |socket| {
                tracker.track_future(crate::events::serve(socket, state, tenant, resume, patterns))
            })
            .into_response()
        })
        .or(warp::path!("events").and(warp::get()).and(upgrade_required()))
        .unify()
        .boxed()
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
