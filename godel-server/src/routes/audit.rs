//! `/audit`: the audit log, newest first, for admins: every mutating request
//! and every refused one, filtered by tenant, action, outcome, credential
//! and time, a page at a time.

use std::sync::Arc;

use godel_core::{AuditEntry, AuditOutcome, AuditQuery, TenantId};
use godel_wire::Page;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::AppState;
use crate::error::ApiResult;
use crate::routes::{Params, ok, raw_query, respond, with};

const PARAMS: [&str; 8] = ["tenant", "action", "outcome", "credential", "since", "until", "limit", "cursor"];

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    warp::path!("audit")
        .and(warp::get())
        .and(with(state.clone()))
        .and(raw_query())
        .then(|s, q| respond(list(s, q)))
        .boxed()
}

async fn list(state: Arc<AppState>, query: String) -> ApiResult {
    let params = Params::parse(&query, &PARAMS)?;
    let query = AuditQuery {
        tenant: params.get("tenant").map(TenantId::new).transpose()?,
        since: params.time("since")?,
        until: params.time("until")?,
        action: params.get("action").map(str::to_owned),
        outcome: params.get("outcome").map(str::parse::<AuditOutcome>).transpose()?,
        credential: params.get("credential").map(str::to_owned),
        limit: params.limit()?,
        cursor: params.get("cursor").map(str::to_owned),
    };
    let page = state.store().list_audit(&query).await?;
    ok(&Page {
        items: page.items.iter().map(entry).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
        quarantined: Vec::new(),
    })
}

fn entry(e: &AuditEntry) -> godel_wire::AuditEntry {
    godel_wire::AuditEntry {
        seq: e.seq,
        at: e.at,
        credential: e.credential.clone(),
        tenant: e.tenant.to_string(),
        role: e.role,
        action: e.action.clone(),
        target: e.target.clone(),
        outcome: e.outcome,
        status: e.status,
        request_id: e.request_id.clone(),
        source: e.source.clone(),
    }
}
