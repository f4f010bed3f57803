//! `/quarantine`: task rows that did not decode, which claims and listings
//! moved out of the queue. Operators read them (the row as stored and the
//! reason) and drop them, one by one or all at once; drops go through the
//! orchestrator like every other write.

use std::sync::Arc;

use godel_core::store::{Cursor, QuarantineQuery};
use godel_core::{EngineError, TaskId};
use godel_wire::{Page, QuarantinePurged, Quarantined};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::AppState;
use crate::auth::RequestContext;
use crate::error::{ApiError, ApiResult};
use crate::routes::{Params, ctx, no_content, ok, raw_query, respond, scope, task_id, tenant, with};

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone()).and(ctx());
    let list =
        warp::path!("quarantine").and(warp::get()).and(s()).and(raw_query()).then(|s, c, q| respond(list(s, c, q)));
    let purge = warp::path!("quarantine" / "purge").and(warp::post()).and(s()).then(|s, c| respond(purge(s, c)));
    let show = warp::path!("quarantine" / String).and(warp::get()).and(s()).then(|id, s, c| respond(show(s, c, id)));
    let drop =
        warp::path!("quarantine" / String).and(warp::delete()).and(s()).then(|id, s, c| respond(drop_row(s, c, id)));
    // The literal path before the `{id}` ones it would otherwise match.
    purge.or(list).unify().or(show).unify().or(drop).unify().boxed()
}

async fn list(state: Arc<AppState>, ctx: RequestContext, query: String) -> ApiResult {
    let params = Params::parse(&query, &["limit", "cursor"])?;
    let query = QuarantineQuery {
        limit: params.limit()?,
        cursor: params.get("cursor").map(|c| c.parse::<Cursor>()).transpose()?,
    };
    let page = state.store().quarantined(&tenant(&state, &ctx), &query).await?;
    ok(&Page {
        items: page.items.into_iter().map(wire).collect::<Vec<_>>(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
        quarantined: Vec::new(),
    })
}

async fn show(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let id = task_id(&id)?;
    let row = state.store().get_quarantined(&tenant(&state, &ctx), id).await.map_err(|e| missing(id, e.into()))?;
    ok(&wire(row))
}

async fn drop_row(state: Arc<AppState>, ctx: RequestContext, id: String) -> ApiResult {
    let id = task_id(&id)?;
    scope(&state, &ctx).drop_quarantined(id).await.map_err(|e| missing(id, e))?;
    no_content()
}

async fn purge(state: Arc<AppState>, ctx: RequestContext) -> ApiResult {
    let purged = scope(&state, &ctx).purge_quarantined().await?;
    ok(&QuarantinePurged { purged })
}

/// A missing row is named as a quarantined row, not as a task.
fn missing(id: TaskId, e: EngineError) -> ApiError {
    match e {
        EngineError::TaskNotFound(_) => ApiError::not_found(format!("no quarantined row for task {id}")),
        other => other.into(),
    }
}

fn wire(row: godel_core::store::Quarantined) -> Quarantined {
    Quarantined { id: row.id, error: row.error, raw: row.raw }
}
