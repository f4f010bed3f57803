//! The SDK's error: API errors keep the server's code; transport failures
//! say which address was tried.

use std::fmt;

/// The error codes of the Godel API.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 400: the request was malformed or invalid.
    InvalidRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404: no such task, agent, session or route.
    NotFound,
    /// 409: the request conflicts with the current state (e.g. purging a running task).
    Conflict,
    /// 429
    RateLimited,
    /// 500
    InternalError,
    /// 503: the server or its store is unavailable; retry later.
    ServiceUnavailable,
    /// A code this version of the SDK does not know.
    Other(String),
}

impl ErrorCode {
    pub(crate) fn parse(code: &str) -> Self {
        match code {
            "invalid_request" => ErrorCode::InvalidRequest,
            "unauthorized" => ErrorCode::Unauthorized,
            "forbidden" => ErrorCode::Forbidden,
            "not_found" => ErrorCode::NotFound,
            "conflict" => ErrorCode::Conflict,
            "rate_limited" => ErrorCode::RateLimited,
            "internal_error" => ErrorCode::InternalError,
            "service_unavailable" => ErrorCode::ServiceUnavailable,
            other => ErrorCode::Other(other.to_owned()),
        }
    }

    /// The code as the API writes it.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::InternalError => "internal_error",
            ErrorCode::ServiceUnavailable => "service_unavailable",
            ErrorCode::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong talking to a Godel server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The API's error code.
        code: ErrorCode,
        /// The server's explanation.
        message: String,
        /// Whether the same request may succeed later.
        retryable: bool,
    },
    /// No connection could be made to the server.
    #[error("cannot reach the Godel server at {url}: {source}")]
    Unreachable {
        /// The address tried.
        url: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server did not answer in time.
    #[error("the Godel server at {url} did not answer within the timeout")]
    Timeout {
        /// The address tried.
        url: String,
    },
    /// The server answered something this SDK does not understand.
    #[error("unexpected response from {url}: {message}")]
    Protocol {
        /// The address.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// The server URL given to the client is not valid.
    #[error("invalid server URL {url:?}: {message}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The API key given to the client cannot be sent (it has characters a
    /// header cannot carry).
    #[error("invalid API key: {message}")]
    InvalidApiKey {
        /// What is wrong with it (never the key itself).
        message: String,
    },
    /// The CA file given for TLS cannot be used.
    #[error("cannot use the CA file {path}: {message}")]
    CaFile {
        /// The file given.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The event stream skipped events that can no longer be delivered
    /// (the server's replay window moved on, or this client fell behind).
    #[error("{missed} events were missed: {message}")]
    EventsMissed {
        /// How many, when known (0 if not).
        missed: u64,
        /// The server's explanation.
        message: String,
    },
}

impl Error {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True if retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Api { retryable, .. } => *retryable,
            Error::Unreachable { .. } | Error::Timeout { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn from_reqwest(url: &str, e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Error::Timeout { url: url.to_owned() }
        } else if e.is_connect() || e.is_request() {
            Error::Unreachable { url: url.to_owned(), source: Box::new(e) }
        } else {
            Error::Protocol { url: url.to_owned(), message: e.to_string() }
        }
    }
}

/// Shorthand for SDK results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
