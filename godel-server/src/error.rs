//! API errors: the `{"error":{"code","message","retryable"}}` envelope, and
//! the one function that maps every failure (ours, the engine's, the
//! store's, warp's) to an HTTP status: engine and store errors by their
//! variant, never by their message.

use std::convert::Infallible;

use godel_core::store::StoreError;
use godel_core::{EngineError, InvalidInput};
use serde::Serialize;
use warp::http::{HeaderValue, StatusCode, header};
use warp::reply::Response;
use warp::{Rejection, Reply};

/// The error codes of the API, each with its status.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Code {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    InternalError,
    ServiceUnavailable,
}

impl Code {
    fn status(self) -> StatusCode {
        match self {
            Code::InvalidRequest => StatusCode::BAD_REQUEST,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Forbidden => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Conflict => StatusCode::CONFLICT,
            Code::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Code::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Code::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A failed request.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: Code,
    pub(crate) message: String,
    /// Overrides the code's status (405, 413, 415 keep the envelope's code but say more).
    status: Option<StatusCode>,
    /// For `rate_limited`: the limit that was hit and when it frees up.
    limit: Option<RateLimit>,
    /// Headers that say more about the refusal (`Allow` on a 405, `Upgrade` on a 426).
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// The numbers a `429` carries in its `Retry-After` and `RateLimit-*` headers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct RateLimit {
    /// Requests allowed per window.
    pub(crate) limit: u64,
    /// Whole seconds until a request would be allowed again (at least 1).
    pub(crate) reset_secs: u64,
}

pub(crate) type ApiResult<T = Response> = Result<T, ApiError>;

impl ApiError {
    pub(crate) fn new(code: Code, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), status: None, limit: None, headers: Vec::new() }
    }

    /// `405`: the route exists under the methods in `allow` only.
    pub(crate) fn method_not_allowed(allow: &[warp::http::Method]) -> Self {
        let allow = allow.iter().map(warp::http::Method::as_str).collect::<Vec<_>>().join(", ");
        let mut error =
            Self::invalid(format!("method not allowed on this route (allowed: {allow}); see /openapi.json"))
                .with_status(StatusCode::METHOD_NOT_ALLOWED);
        error.headers.push((header::ALLOW, HeaderValue::from_str(&allow).expect("method names are header-safe")));
        error
    }

    /// `426`: a WebSocket route asked without the upgrade handshake.
    pub(crate) fn upgrade_required() -> Self {
        let mut error = Self::invalid(
            "this route speaks WebSocket only: send GET with Connection: Upgrade, Upgrade: websocket, \
             Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
        )
        .with_status(StatusCode::UPGRADE_REQUIRED);
        error.headers.push((header::UPGRADE, HeaderValue::from_static("websocket")));
        error.headers.push((header::CONNECTION, HeaderValue::from_static("Upgrade")));
        error.headers.push((header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13")));
        error
    }

    /// `401 unauthorized`: no credential, or one that is malformed, unknown,
    /// expired or revoked. The message says which, never the credential.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(Code::Unauthorized, message)
    }

    /// `403 forbidden`.
    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(Code::Forbidden, message)
    }

    /// `429 rate_limited`, with the limit for its headers.
    pub(crate) fn rate_limited(message: impl Into<String>, limit: RateLimit) -> Self {
        Self { limit: Some(limit), ..Self::new(Code::RateLimited, message) }
    }

    /// `415`: a mutating request whose body is not JSON.
    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::invalid(message).with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidRequest, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.code.status())
    }

    /// The only place an error becomes an HTTP response.
    pub(crate) fn into_response(self) -> Response {
        let retryable = matches!(self.code, Code::ServiceUnavailable | Code::InternalError | Code::RateLimited);
        if self.code == Code::InternalError {
            tracing::error!(message = %self.message, "internal error");
        }
        let body = serde_json::json!({
            "error": { "code": self.code, "message": self.message, "retryable": retryable }
        });
        let mut response = warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        let headers = response.headers_mut();
        headers.extend(self.headers);
        if self.code == Code::Unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(limit) = self.limit {
            let reset = limit.reset_secs.max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(reset));
            headers.insert("ratelimit-limit", HeaderValue::from(limit.limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(0u64));
            headers.insert("ratelimit-reset", HeaderValue::from(reset));
        }
        response
    }
}

impl From<InvalidInput> for ApiError {
    fn from(e: InvalidInput) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<EngineError> for ApiError {
    /// The status of every engine (and so store) error, by meaning.
    fn from(e: EngineError) -> Self {
        let code = match &e {
            EngineError::TaskNotFound(_) | EngineError::SessionNotFound(_) | EngineError::AgentNotFound(_) => {
                Code::NotFound
            }
            EngineError::AgentExists(_)
            | EngineError::InvalidTransition { .. }
            | EngineError::NotDeadLettered { .. }
            | EngineError::SessionEnded { .. } => Code::Conflict,
            EngineError::InvalidInput(_) => Code::InvalidRequest,
            // Retrying does not help until the budget is raised or the month ends.
            EngineError::BudgetExceeded { .. } => Code::Forbidden,
            EngineError::Store(StoreError::LeaseLost(_)) => Code::Conflict,
            EngineError::Store(StoreError::Unavailable { .. }) => Code::ServiceUnavailable,
            _ => Code::InternalError,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<StoreError> for ApiError {
    /// A read's failure: the same statuses as the engine's commands.
    fn from(e: StoreError) -> Self {
        EngineError::from(e).into()
    }
}

/// Turns warp's own rejections (no route, wrong method, body too large, …)
/// into the envelope. Reached only when no route produced a response.
pub(crate) async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::not_found("no such route; see /openapi.json for the API")
    } else if let Some(e) = rejection.find::<warp::reject::PayloadTooLarge>() {
        let error = ApiError::invalid(format!("request body too large: {e} (limit {} bytes)", crate::routes::MAX_BODY))
            .with_status(StatusCode::PAYLOAD_TOO_LARGE);
        // The unread body makes the connection unusable; say so, or a client
        // reusing it fails its next request.
        let mut response = error.into_response();
        response.headers_mut().insert(warp::http::header::CONNECTION, warp::http::HeaderValue::from_static("close"));
        return Ok(response);
    } else if rejection.find::<warp::reject::LengthRequired>().is_some() {
        ApiError::invalid("a Content-Length header is required").with_status(StatusCode::LENGTH_REQUIRED)
    } else if let Some(e) = rejection.find::<warp::reject::UnsupportedMediaType>() {
        ApiError::invalid(e.to_string()).with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::invalid("method not allowed on this route; see /openapi.json")
            .with_status(StatusCode::METHOD_NOT_ALLOWED)
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::invalid(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::invalid(e.to_string())
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::invalid(e.to_string())
    } else {
        ApiError::new(Code::InternalError, format!("unhandled rejection: {rejection:?}"))
    };
    Ok(error.into_response())
}
