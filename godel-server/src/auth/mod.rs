//! Who is calling, and may they: the guard every request passes before warp
//! sees it.
//!
//! [`make_service`] wraps the routes in a hyper service that, per request,
//! checks `Host` and `Origin`, finds the route in [`rules::RULES`] (a route
//! without a row is refused), authenticates the `Authorization: Bearer`
//! credential (an API key, or a JWT when `[auth.jwt]` is set), applies the
//! rate limits, authorizes the role, checks that a mutating request's body is
//! JSON, and hands the request on with a [`RequestContext`] in its
//! extensions. Handlers take the tenant from that context, never from the
//! request. Every refused request and every mutating one is written to the
//! audit log (`audit`), off the request path.

pub(crate) mod audit;
mod browser;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod limits;
pub(crate) mod rules;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use godel_core::{AuditEntry, AuditOutcome, KeyId, Role, TenantId, Timestamp};
use rand::RngCore;
use tokio_util::sync::CancellationToken;
use warp::http::{HeaderMap, HeaderValue, Request, header};
use warp::hyper::Body;
use warp::hyper::service::Service;
use warp::reply::Response;

use crate::AppState;
use crate::auth::rules::{Access, Probe, Rule};
use crate::config::AuthConfig;
use crate::error::{ApiError, Code};

/// Who made a request: what its credential says.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct Principal {
    /// The tenant the request acts as (for an admin on the tenants route, the
    /// tenant named in the path).
    pub(crate) tenant: TenantId,
    pub(crate) role: Role,
    /// The key's id, or `jwt:<sub>` for a token.
    pub(crate) credential: String,
    /// The key, when the credential is one.
    pub(crate) key: Option<KeyId>,
}

/// What the guard learned about a request, in its extensions for the handlers
/// (`routes::ctx()`).
#[derive(Clone, Debug)]
pub(crate) struct RequestContext {
    /// `None` on public routes.
    pub(crate) principal: Option<Principal>,
    /// Also sent back as `x-request-id` and written to the audit log.
    pub(crate) request_id: String,
    /// The peer's address.
    pub(crate) source: IpAddr,
}

/// The guard's state: configuration, key cache, JWT verifier, limits and the
/// audit writer.
#[derive(Debug)]
pub(crate) struct Auth {
    config: AuthConfig,
    default_tenant: TenantId,
    /// The address the server listens on, once it does (for the `Host` and
    /// `Origin` checks).
    local: OnceLock<SocketAddr>,
    pub(crate) keys: keys::KeyCache,
    jwt: Option<jwt::Verifier>,
    limits: limits::Limits,
    pub(crate) audit: audit::Audit,
}

/// How often key usage is written back and idle limiter state forgotten.
const MAINTAIN_EVERY: Duration = Duration::from_secs(30);

impl Auth {
    /// Checks the configuration (reads the JWT public key) and builds the guard.
    pub(crate) fn new(config: &AuthConfig, default_tenant: TenantId, audit: audit::Audit) -> anyhow::Result<Self> {
        let jwt = config.jwt.as_ref().map(jwt::Verifier::new).transpose()?;
        Ok(Self {
            config: config.clone(),
            default_tenant,
            local: OnceLock::new(),
            keys: keys::KeyCache::default(),
            jwt,
            limits: limits::Limits::new(config),
            audit,
        })
    }

    /// Tells the guard the address the server listens on.
    pub(crate) fn listening(&self, addr: SocketAddr) {
        let _ = self.local.set(addr);
    }

    /// Until `stop`: writes which keys were used (`last_used_at`) and prunes
    /// the limiters, every [`MAINTAIN_EVERY`]; and once more at the end.
    pub(crate) async fn maintain(state: Arc<AppState>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(MAINTAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                () = stop.cancelled() => true,
                _ = tick.tick() => false,
            };
            state.auth.limits.prune();
            let used = state.auth.keys.take_used();
            if !used.is_empty()
                && let Err(e) = state.store().touch_keys(&used).await
            {
                tracing::warn!(error = %e, keys = used.len(), "cannot record when keys were last used");
            }
            if stopping {
                return;
            }
        }
    }

    fn public(&self, access: Access) -> bool {
        match access {
            Access::Public => true,
            Access::Configurable(Probe::Health) => self.config.public_health,
            Access::Configurable(Probe::Metrics) => self.config.public_metrics,
            Access::Roles(_) => false,
        }
    }
}

/// Wraps `routes` in the guard: call the result with each connection's peer
/// address to get that connection's service.
pub(crate) fn make_service<S>(state: Arc<AppState>, routes: S) -> impl Fn(SocketAddr) -> Guarded<S> + Clone
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    move |peer| Guarded { state: state.clone(), inner: routes.clone(), peer }
}

/// One connection's guarded service.
#[derive(Clone, Debug)]
pub(crate) struct Guarded<S> {
    state: Arc<AppState>,
    inner: S,
    peer: SocketAddr,
}

impl<S> Service<Request<Body>> for Guarded<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The routes are always ready (a warp filter service is).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (state, inner, peer) = (self.state.clone(), self.inner.clone(), self.peer);
        Box::pin(async move { Ok(handle(state, inner, peer.ip(), request).await) })
    }
}

/// What an admitted request may do, and how to audit it.
struct Admitted {
    principal: Option<Principal>,
    action: String,
    target: Option<String>,
    /// Mutating, or acting on another tenant.
    audited: bool,
}

/// Why a request was refused, with what is known of its caller.
struct Refusal {
    error: ApiError,
    principal: Option<Principal>,
    action: String,
    target: Option<String>,
}

async fn handle<S>(state: Arc<AppState>, mut inner: S, source: IpAddr, mut request: Request<Body>) -> Response
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    let at = Timestamp::now();
    let request_id = request_id();
    let (mut response, audit) = match admit(&state, source, &mut request).await {
        Ok(admitted) => {
            let context =
                RequestContext { principal: admitted.principal.clone(), request_id: request_id.clone(), source };
            request.extensions_mut().insert(context);
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let status = response.status();
            let outcome = if status.is_success() || status.is_redirection() {
                AuditOutcome::Allowed
            } else {
                AuditOutcome::Failed
            };
            // A creation names what it made in `Location`.
            let target = admitted.target.or_else(|| {
                let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
                location.rsplit('/').next().map(str::to_owned)
            });
            let audit = admitted.audited.then(|| Draft {
                principal: admitted.principal,
                action: admitted.action,
                target,
                outcome,
                status: status.as_u16(),
            });
            (response, audit)
        }
        Err(refusal) => {
            let status = refusal.error.status().as_u16();
            tracing::info!(request_id, %source, status, action = refusal.action, message = refusal.error.message, "request refused");
            let draft = Draft {
                principal: refusal.principal,
                action: refusal.action,
                target: refusal.target,
                outcome: AuditOutcome::Denied,
                status,
            };
            (refusal.error.into_response(), Some(draft))
        }
    };
    if let Some(draft) = audit {
        state.auth.audit.record(AuditEntry {
            seq: 0,
            at,
            credential: draft.principal.as_ref().map(|p| p.credential.clone()),
            tenant: draft.principal.as_ref().map_or_else(|| state.auth.default_tenant.clone(), |p| p.tenant.clone()),
            role: draft.principal.as_ref().map(|p| p.role),
            action: draft.action,
            target: draft.target,
            outcome: draft.outcome,
            status: draft.status,
            request_id: request_id.clone(),
            source: source.to_string(),
        });
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

struct Draft {
    principal: Option<Principal>,
    action: String,
    target: Option<String>,
    outcome: AuditOutcome,
    status: u16,
}

/// The checks, in order: browsers, the route, the source's failures, the
/// credential, its rate, its role, the body's type.
async fn admit(state: &AppState, source: IpAddr, request: &mut Request<Body>) -> Result<Admitted, Refusal> {
    let auth = &state.auth;
    let path = request.uri().path().to_owned();
    let cross = cross_tenant(&path);
    let route = cross.as_ref().map_or(path.as_str(), |(_, inner)| inner.as_str());
    let matched = rules::lookup(request.method(), route);
    let rule: Option<&'static Rule> = matched.as_ref().map(|m| m.rule);
    let mut action = match (rule, &cross) {
        (Some(rule), Some(_)) => format!("tenants.{}", rule.action),
        (Some(rule), None) => rule.action.to_owned(),
        (None, _) => "route.unknown".to_owned(),
    };
    let mut target = matched.as_ref().and_then(|m| m.params.first()).map(|p| (*p).to_owned());
    if rule.is_none() {
        target = Some(path.chars().take(200).collect());
    }
    let refuse = |error: ApiError, principal: Option<Principal>, action: &str, target: &Option<String>| Refusal {
        error,
        principal,
        action: action.to_owned(),
        target: target.clone(),
    };

    let public = cross.is_none() && rule.is_some_and(|r| auth.public(r.access));
    if public {
        return Ok(Admitted { principal: None, action, target, audited: false });
    }
    let local = auth.local.get().copied().unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let host = host.or_else(|| request.uri().authority().map(|a| a.as_str()));
    let origin = match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        Some(Ok(origin)) => Some(origin),
        Some(Err(_)) => {
            return Err(refuse(ApiError::forbidden("the Origin header is not ASCII"), None, &action, &target));
        }
        None => None,
    };
    if let Err(message) = browser::check(&auth.config, local, host, origin) {
        return Err(refuse(ApiError::forbidden(message), None, &action, &target));
    }

    if let Err(limit) = auth.limits.check_source(source) {
        let error = ApiError::rate_limited("too many failed authentications from this address; retry later", limit);
        return Err(refuse(error, None, "auth.failed", &target));
    }
    let mut principal = match authenticate(state, headers).await {
        Ok(principal) => principal,
        Err(error) if error.code == Code::Unauthorized => {
            // Only a credential that was presented and failed counts as a
            // guess; a request without one guesses nothing.
            let presented = headers.contains_key(header::AUTHORIZATION);
            let error = match if presented { auth.limits.failed(source) } else { Ok(()) } {
                Ok(()) => error,
                Err(limit) => ApiError::rate_limited(
                    format!("{}; too many failed authentications from this address, retry later", error.message),
                    limit,
                ),
            };
            let what = Some(action.clone());
            return Err(refuse(error, None, "auth.failed", &what));
        }
        Err(error) => return Err(refuse(error, None, &action, &target)),
    };
    let Some(rule) = rule else {
        // A route that exists under another method is a 405, as the router says.
        let allow = rules::allowed(route);
        let error = if allow.is_empty() {
            ApiError::not_found("no such route; see /openapi.json for the API")
        } else {
            ApiError::method_not_allowed(&allow)
        };
        return Err(refuse(error, Some(principal), &action, &target));
    };
    if let Err(limit) = auth.limits.request(&principal.credential) {
        let error = ApiError::rate_limited(
            format!("this credential is over its rate of {} requests per second; retry later", limit.limit),
            limit,
        );
        return Err(refuse(error, Some(principal), &action, &target));
    }
    let allowed = match rule.access {
        Access::Public => true,
        Access::Configurable(_) => principal.role != Role::Worker,
        Access::Roles(roles) => roles.contains(&principal.role),
    };
    if !allowed {
        let error =
            ApiError::forbidden(format!("the {} role may not call {} {}", principal.role, rule.method, rule.path));
        return Err(refuse(error, Some(principal), &action, &target));
    }
    if let Some((tenant, inner)) = cross {
        if principal.role != Role::Admin {
            let error = ApiError::forbidden("only admins may act on another tenant");
            return Err(refuse(error, Some(principal), &action, &target));
        }
        let tenant = match TenantId::new(&tenant) {
            Ok(tenant) => tenant,
            Err(e) => {
                let error = ApiError::invalid(format!("invalid tenant in the path: {}", e.reason));
                return Err(refuse(error, Some(principal), &action, &target));
            }
        };
        principal.tenant = tenant;
        let rewritten = match request.uri().query() {
            Some(query) => format!("{inner}?{query}"),
            None => inner,
        };
        match rewritten.parse() {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                let error = ApiError::invalid("malformed path");
                return Err(refuse(error, Some(principal), &action, &target));
            }
        }
        action = format!("tenants.{}", rule.action);
    }
    if rule.mutating
        && let Err(error) = json_body(request.headers())
    {
        return Err(refuse(error, Some(principal), &action, &target));
    }
    let audited = rule.mutating || action.starts_with("tenants.");
    Ok(Admitted { principal: Some(principal), action, target, audited })
}

/// `/api/v1/tenants/{tenant}/<rest>`: the tenant and the route it stands for
/// (`/api/v1/<rest>`, or `/events` for `<rest>` = `events`).
fn cross_tenant(path: &str) -> Option<(String, String)> {
    let rest = path.strip_prefix("/api/v1/tenants/")?;
    let (tenant, rest) = rest.split_once('/')?;
    if tenant.is_empty() || rest.is_empty() {
        return None;
    }
    let inner = if rest == "events" { "/events".to_owned() } else { format!("/api/v1/{rest}") };
    Some((tenant.to_owned(), inner))
}

/// The request's credential, checked: `Authorization: Bearer <key or JWT>`,
/// exactly once.
async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let auth = &state.auth;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values
        .next()
        .ok_or_else(|| ApiError::unauthorized("no credential: send Authorization: Bearer <API key or token>"))?;
    if values.next().is_some() {
        return Err(ApiError::unauthorized("more than one Authorization header"));
    }
    let value = value.to_str().map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthorized("malformed Authorization header: expected Bearer <credential>"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::unauthorized("the Authorization scheme must be Bearer"));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::unauthorized("malformed Authorization header: the bearer credential is empty"));
    }
    if token.len() > jwt::MAX_TOKEN {
        return Err(ApiError::unauthorized(format!("the credential is longer than {} bytes", jwt::MAX_TOKEN)));
    }
    if keys::looks_like_key(token) {
        let now = Timestamp::now();
        let key = auth.keys.get(state.store(), &keys::hash(token)).await?;
        return match key {
            None => Err(ApiError::unauthorized("unknown API key")),
            Some(key) if key.revoked_at.is_some() => Err(ApiError::unauthorized("the API key was revoked")),
            Some(key) if !key.usable(now) => Err(ApiError::unauthorized("the API key has expired")),
            Some(key) => {
                auth.keys.used(&key.id, now);
                Ok(Principal { tenant: key.tenant, role: key.role, credential: key.id.to_string(), key: Some(key.id) })
            }
        };
    }
    if token.starts_with(keys::PREFIX) {
        return Err(ApiError::unauthorized("malformed API key"));
    }
    match &auth.jwt {
        Some(verifier) => {
            let identity = verifier.verify(token).map_err(ApiError::unauthorized)?;
            Ok(Principal {
                tenant: identity.tenant,
                role: identity.role,
                credential: format!("jwt:{}", identity.subject),
                key: None,
            })
        }
        None => Err(ApiError::unauthorized("unknown credential: expected an API key (gdl_…)")),
    }
}

/// A mutating request's body must be JSON: a page on another site can send
/// `text/plain` without the browser asking first, but not `application/json`.
/// An empty body without a type is fine (`curl -X POST`).
fn json_body(headers: &HeaderMap) -> Result<(), ApiError> {
    let has_body = match headers.get(header::CONTENT_LENGTH) {
        Some(length) => length.as_bytes() != b"0",
        None => headers.contains_key(header::TRANSFER_ENCODING),
    };
    match headers.get(header::CONTENT_TYPE) {
        None if !has_body => Ok(()),
        None => Err(ApiError::unsupported_media_type("send the request body with Content-Type: application/json")),
        Some(value) => {
            let mime = value.to_str().unwrap_or("").split(';').next().unwrap_or("").trim();
            if mime.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(ApiError::unsupported_media_type(format!(
                    "unsupported Content-Type {mime:?}: send application/json"
                )))
            }
        }
    }
}

/// 16 random bytes in hex.
fn request_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenants_route_names_a_tenant_and_a_route() {
        assert_eq!(
            cross_tenant("/api/v1/tenants/acme/tasks/1/cancel"),
            Some(("acme".into(), "/api/v1/tasks/1/cancel".into()))
        );
        assert_eq!(cross_tenant("/api/v1/tenants/acme/events"), Some(("acme".into(), "/events".into())));
        assert_eq!(cross_tenant("/api/v1/tenants/acme"), None);
        assert_eq!(cross_tenant("/api/v1/tenants//tasks"), None);
    }

    #[test]
    fn mutating_bodies_must_be_json() {
        let headers = |pairs: &[(header::HeaderName, &str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(k.clone(), HeaderValue::from_str(v).unwrap());
            }
            map
        };
        assert!(json_body(&headers(&[])).is_ok());
        assert!(json_body(&headers(&[(header::CONTENT_LENGTH, "0")])).is_ok());
        assert!(json_body(&headers(&[(header::CONTENT_TYPE, "application/json; charset=utf-8")])).is_ok());
        assert!(json_body(&headers(&[(header::CONTENT_LENGTH, "2")])).is_err());
        assert!(json_body(&headers(&[(header::CONTENT_TYPE, "text/plain")])).is_err());
        let refused = json_body(&headers(&[(header::CONTENT_TYPE, "application/x-www-form-urlencoded")])).unwrap_err();
        assert_eq!(refused.status().as_u16(), 415);
    }
}
