//! The error envelope every failed API request answers with:
//! `{"error": {"code", "message", "retryable"}}`.

use serde::{Deserialize, Serialize};

/// The body of an error response.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct ErrorEnvelope {
    /// What went wrong.
    pub error: ErrorBody,
}

/// What went wrong, by code.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct ErrorBody {
    /// `invalid_request`, `not_found`, `conflict`, `service_unavailable`, …
    pub code: String,
    /// For a person: names the field or the state at fault.
    #[serde(default)]
    pub message: String,
    /// True if retrying later may succeed.
    #[serde(default)]
    pub retryable: bool,
}
