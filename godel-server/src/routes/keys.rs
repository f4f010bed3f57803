//! `/keys`: API keys, for admins (the guard's table allows no other role).
//! Create (the secret is in the answer, and nowhere else ever again), list,
//! get, revoke and rotate. Keys live in the store (`Credentials`), so every
//! node sharing it sees a change within the guard's cache lifetime.

use std::sync::Arc;
use std::time::Duration;

use godel_core::store::StoreError;
use godel_core::{ApiKey, KeyId, TenantId, Timestamp};
use godel_wire::{CreateKey, CreatedKey, KeyView, Page, RotateKey, RotatedKey};
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::{StatusCode, header};
use warp::hyper::body::Bytes;
use warp::reply::Response;

use crate::AppState;
use crate::auth::RequestContext;
use crate::auth::keys::generate;
use crate::error::{ApiError, ApiResult};
use crate::routes::{Params, body, ctx, json_with, ok, raw_query, respond, tenant, with};
use crate::wire::parse_body;

/// The shortest and longest life a new key may be given (`expires_in`).
pub(crate) const EXPIRES_IN: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(5 * 365 * 86_400));
/// The longest grace period of a rotation.
pub(crate) const MAX_GRACE: Duration = Duration::from_secs(30 * 86_400);
/// The grace period of a rotation that names none.
const DEFAULT_GRACE: Duration = Duration::from_secs(3_600);

pub(super) fn routes(state: &Arc<AppState>) -> BoxedFilter<(Response,)> {
    let s = || with(state.clone());
    let list = warp::path!("keys").and(warp::get()).and(s()).and(raw_query()).then(|s, q| respond(list(s, q)));
    let create =
        warp::path!("keys").and(warp::post()).and(s()).and(ctx()).and(body()).then(|s, c, b| respond(create(s, c, b)));
    let get = warp::path!("keys" / String).and(warp::get()).and(s()).then(|id, s| respond(get(s, id)));
    let revoke = warp::path!("keys" / String).and(warp::delete()).and(s()).then(|id, s| respond(revoke(s, id)));
    let rotate = warp::path!("keys" / String / "rotate")
        .and(warp::post())
        .and(s())
        .and(body())
        .then(|id, s, b| respond(rotate(s, id, b)));
    list.or(create).unify().or(rotate).unify().or(get).unify().or(revoke).unify().boxed()
}

/// A key as the API shows it: without its hash.
pub(crate) fn view(key: &ApiKey) -> KeyView {
    KeyView {
        id: key.id,
        name: key.name.clone(),
        tenant: key.tenant.to_string(),
        role: key.role,
        prefix: key.prefix.clone(),
        created_at: key.created_at,
        expires_at: key.expires_at,
        last_used_at: key.last_used_at,
        revoked_at: key.revoked_at,
    }
}

async fn list(state: Arc<AppState>, query: String) -> ApiResult {
    let params = Params::parse(&query, &["tenant"])?;
    let tenant = params.get("tenant").map(TenantId::new).transpose()?;
    let keys = state.store().list_keys(tenant.as_ref()).await?;
    ok(&Page { items: keys.iter().map(view).collect(), next_cursor: None, quarantined: Vec::new() })
}

async fn create(state: Arc<AppState>, ctx: RequestContext, body: Bytes) -> ApiResult {
    let request: CreateKey = parse_body(&body)?;
    ApiKey::validate_name(&request.name)?;
    let tenant = match &request.tenant {
        Some(tenant) => {
            TenantId::new(tenant.as_str()).map_err(|e| ApiError::invalid(format!("invalid tenant: {}", e.reason)))?
        }
        // The calling admin's tenant (or the one it acts on).
        None => tenant(&state, &ctx),
    };
    let now = Timestamp::now();
    let expires_at = match &request.expires_in {
        Some(text) => Some(now + duration("expires_in", text, EXPIRES_IN)?),
        None => None,
    };
    let (key, secret) =
        new_key(&state, NewKey { name: request.name, tenant, role: request.role, expires_at }, now).await?;
    created(&key.id, &CreatedKey { key: view(&key), secret })
}

async fn get(state: Arc<AppState>, id: String) -> ApiResult {
    let key = state.store().get_key(&key_id(&id)?).await.map_err(key_error)?;
    ok(&view(&key))
}

async fn revoke(state: Arc<AppState>, id: String) -> ApiResult {
    let key = state.store().revoke_key(&key_id(&id)?, Timestamp::now()).await.map_err(key_error)?;
    // This node stops accepting it at once; others within the cache's life.
    state.auth.keys.invalidate();
    ok(&view(&key))
}

async fn rotate(state: Arc<AppState>, id: String, body: Bytes) -> ApiResult {
    let id = key_id(&id)?;
    // An empty body asks for the default grace period.
    let request: RotateKey = if body.is_empty() { RotateKey::default() } else { parse_body(&body)? };
    let grace = match &request.grace {
        Some(text) => duration("grace", text, (Duration::ZERO, MAX_GRACE))?,
        None => DEFAULT_GRACE,
    };
    let store = state.store();
    let old = store.get_key(&id).await.map_err(key_error)?;
    let now = Timestamp::now();
    if !old.usable(now) {
        return Err(ApiError::new(
            crate::error::Code::Conflict,
            format!("key {id} is revoked or expired; create a new key instead"),
        ));
    }
    let spec =
        NewKey { name: old.name.clone(), tenant: old.tenant.clone(), role: old.role, expires_at: old.expires_at };
    let (key, secret) = new_key(&state, spec, now).await?;
    let previous = store.expire_key(&id, now + grace).await.map_err(key_error)?;
    state.auth.keys.invalidate();
    created(&key.id, &RotatedKey { key: view(&key), secret, previous: view(&previous) })
}

/// What a new key is, before it has a secret.
pub(crate) struct NewKey {
    pub(crate) name: String,
    pub(crate) tenant: TenantId,
    pub(crate) role: godel_core::Role,
    pub(crate) expires_at: Option<Timestamp>,
}

/// Makes a key, stores it, and returns it with its secret.
pub(crate) async fn new_key(state: &AppState, spec: NewKey, now: Timestamp) -> ApiResult<(ApiKey, String)> {
    let made = generate();
    let key = ApiKey {
        id: KeyId::new(),
        name: spec.name,
        tenant: spec.tenant,
        role: spec.role,
        hash: made.hash,
        prefix: made.prefix.clone(),
        created_at: now,
        expires_at: spec.expires_at,
        last_used_at: None,
        revoked_at: None,
    };
    state.store().create_key(&key).await?;
    Ok((key, made.plaintext))
}

fn created(id: &KeyId, value: &impl serde::Serialize) -> ApiResult {
    let mut reply = json_with(StatusCode::CREATED, value);
    if let Ok(location) = header::HeaderValue::from_str(&format!("/api/v1/keys/{id}")) {
        reply.headers_mut().insert(header::LOCATION, location);
    }
    Ok(reply)
}

/// A humantime duration (`90s`, `12h`, `30d`) within `range`, or an error naming `field`.
fn duration(field: &str, text: &str, (min, max): (Duration, Duration)) -> ApiResult<Duration> {
    let range = || format!("{} to {}", humantime::format_duration(min), humantime::format_duration(max));
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        ApiError::invalid(format!(
            "invalid {field}: expected a duration such as 1h or 30d ({}), got {text:?}: {e}",
            range()
        ))
    })?;
    if d < min || d > max {
        return Err(ApiError::invalid(format!("invalid {field}: expected {}, got {text:?}", range())));
    }
    Ok(d)
}

fn key_id(raw: &str) -> ApiResult<KeyId> {
    raw.parse().map_err(|_| ApiError::invalid(format!("invalid key id: expected a UUID, got {raw:?}")))
}

/// A missing key is a 404; the rest as every store error.
fn key_error(e: StoreError) -> ApiError {
    match e {
        StoreError::KeyNotFound(id) => ApiError::not_found(format!("key {id} not found")),
        e => e.into(),
    }
}
