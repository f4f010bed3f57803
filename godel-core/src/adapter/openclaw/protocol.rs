//! The OpenClaw gateway's wire format (protocol 3 and 4): the frames, and the
//! closed parameter objects of the requests Godel sends.
//!
//! The gateway rejects an unknown params field with `INVALID_REQUEST` and
//! treats `null` as a value, so every optional field here is skipped when
//! absent rather than serialized as `null`. Incoming payloads are read as
//! JSON values: the gateway adds fields between releases and Godel must not
//! break on them.

use serde::Serialize;
use serde_json::Value;

/// The protocol versions Godel speaks.
pub(crate) const PROTOCOL_MIN: u32 = 3;
/// See [`PROTOCOL_MIN`].
pub(crate) const PROTOCOL_MAX: u32 = 4;
/// The scopes Godel needs: `operator.write` for runs, waits and aborts,
/// `operator.read` for `chat.history` when reconciling.
pub(crate) const SCOPES: [&str; 2] = ["operator.read", "operator.write"];
/// The client id Godel presents (from the gateway's closed list).
pub(crate) const CLIENT_ID: &str = "gateway-client";
/// The client mode Godel presents (from the gateway's closed list).
pub(crate) const CLIENT_MODE: &str = "backend";
/// The role of a control-plane client.
pub(crate) const ROLE: &str = "operator";

/// A request frame.
#[derive(Serialize, Debug)]
pub(crate) struct Request<'a> {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) id: &'a str,
    pub(crate) method: &'a str,
    pub(crate) params: &'a Value,
}

/// Params of `connect`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectParams {
    pub(crate) min_protocol: u32,
    pub(crate) max_protocol: u32,
    pub(crate) client: ClientInfo,
    pub(crate) role: &'static str,
    pub(crate) scopes: Vec<String>,
    pub(crate) caps: Vec<String>,
    pub(crate) auth: Auth,
    pub(crate) device: Device,
}

/// `connect.client`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClientInfo {
    pub(crate) id: &'static str,
    pub(crate) version: &'static str,
    pub(crate) platform: String,
    pub(crate) mode: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) display_name: Option<String>,
}

/// `connect.auth`: a token or a password, never both.
#[derive(Serialize, Debug, Clone, Default)]
pub(crate) struct Auth {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) password: Option<String>,
}

/// `connect.device`: the signed device identity.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Device {
    pub(crate) id: String,
    pub(crate) public_key: String,
    pub(crate) signature: String,
    pub(crate) signed_at: u64,
    pub(crate) nonce: String,
}

/// Params of `agent`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentParams {
    pub(crate) message: String,
    pub(crate) session_key: String,
    pub(crate) idempotency_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) extra_system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deliver: Option<bool>,
}

/// Params of `agent.wait`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentWaitParams {
    pub(crate) run_id: String,
    pub(crate) timeout_ms: u64,
}

/// Params of `sessions.abort`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SessionsAbortParams {
    pub(crate) key: String,
    pub(crate) run_id: String,
}

/// Params of `chat.abort`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatAbortParams {
    pub(crate) session_key: String,
    pub(crate) run_id: String,
}

/// Params of `chat.history`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ChatHistoryParams {
    pub(crate) session_key: String,
    pub(crate) limit: u32,
}

/// A response frame's error object.
#[derive(Clone, PartialEq, Debug, Default)]
pub(crate) struct GatewayError {
    pub(crate) code: String,
    pub(crate) message: String,
    /// `details.code`, the reason to branch on (`PAIRING_REQUIRED`, `MISSING_SCOPE`, …).
    pub(crate) detail_code: Option<String>,
    pub(crate) details: Value,
    pub(crate) retryable: Option<bool>,
    pub(crate) retry_after_ms: Option<u64>,
}

impl GatewayError {
    pub(crate) fn from_value(v: &Value) -> Self {
        Self {
            code: str_at(v, "code").unwrap_or("UNKNOWN").to_owned(),
            message: str_at(v, "message").unwrap_or("").to_owned(),
            detail_code: v.get("details").and_then(|d| d.get("code")).and_then(Value::as_str).map(str::to_owned),
            details: v.get("details").cloned().unwrap_or(Value::Null),
            retryable: v.get("retryable").and_then(Value::as_bool),
            retry_after_ms: v.get("retryAfterMs").and_then(Value::as_u64),
        }
    }

    /// Whether another attempt might succeed: the gateway's own word when it
    /// gives one, else by code.
    pub(crate) fn is_retryable(&self) -> bool {
        self.retryable.unwrap_or(matches!(self.code.as_str(), "UNAVAILABLE" | "AGENT_TIMEOUT" | "NOT_LINKED"))
    }
}

impl std::fmt::Display for GatewayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail_code {
            Some(d) => write!(f, "{} ({d}): {}", self.code, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

/// A response frame.
#[derive(Clone, PartialEq, Debug)]
pub(crate) struct Response {
    pub(crate) id: String,
    pub(crate) result: Result<Value, GatewayError>,
}

/// An incoming frame.
#[derive(Clone, PartialEq, Debug)]
pub(crate) enum Incoming {
    Response(Response),
    Event { event: String, payload: Value },
}

impl Incoming {
    /// Parses a text frame; a frame of an unknown shape is an error naming what is wrong.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("a frame is not JSON: {e}"))?;
        match str_at(&v, "type") {
            Some("res") => {
                let id = str_at(&v, "id").ok_or("a response frame has no string id")?.to_owned();
                let ok = v.get("ok").and_then(Value::as_bool).ok_or("a response frame has no boolean ok")?;
                let result = if ok {
                    Ok(v.get("payload").cloned().unwrap_or(Value::Null))
                } else {
                    Err(GatewayError::from_value(v.get("error").unwrap_or(&Value::Null)))
                };
                Ok(Incoming::Response(Response { id, result }))
            }
            Some("event") => {
                let event = str_at(&v, "event").ok_or("an event frame has no string event")?.to_owned();
                Ok(Incoming::Event { event, payload: v.get("payload").cloned().unwrap_or(Value::Null) })
            }
            Some(other) => Err(format!("unexpected frame type {other:?}")),
            None => Err("a frame has no type".to_owned()),
        }
    }
}

/// The string at `key` of an object, if any.
pub(crate) fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The exact string a device signs (`v3|…`).
pub(crate) fn signature_payload(p: &SignatureInput<'_>) -> String {
    format!(
        "v3|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        p.device_id,
        p.client_id,
        p.client_mode,
        p.role,
        p.scopes.join(","),
        p.signed_at,
        p.token.unwrap_or(""),
        p.nonce,
        p.platform.to_lowercase(),
        p.device_family.unwrap_or("").to_lowercase(),
    )
}

/// What goes into a device signature.
#[derive(Debug)]
pub(crate) struct SignatureInput<'a> {
    pub(crate) device_id: &'a str,
    pub(crate) client_id: &'a str,
    pub(crate) client_mode: &'a str,
    pub(crate) role: &'a str,
    pub(crate) scopes: &'a [String],
    pub(crate) signed_at: u64,
    pub(crate) token: Option<&'a str>,
    pub(crate) nonce: &'a str,
    pub(crate) platform: &'a str,
    pub(crate) device_family: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_optionals_are_not_serialized() {
        let p = AgentParams {
            message: "hi".into(),
            session_key: "agent:main:x".into(),
            idempotency_key: "k".into(),
            agent_id: None,
            label: None,
            extra_system_prompt: None,
            timeout: None,
            deliver: Some(false),
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"message":"hi","sessionKey":"agent:main:x","idempotencyKey":"k","deliver":false})
        );
    }

    #[test]
    fn frames_parse_or_say_why_not() {
        let r = Incoming::parse(r#"{"type":"res","id":"1","ok":false,"error":{"code":"FORBIDDEN","message":"m","details":{"code":"MISSING_SCOPE"}}}"#).unwrap();
        let Incoming::Response(Response { result: Err(e), .. }) = r else { panic!("expected an error response") };
        assert_eq!(e.detail_code.as_deref(), Some("MISSING_SCOPE"));
        assert!(!e.is_retryable());
        assert!(Incoming::parse(r#"{"type":"res","ok":true}"#).unwrap_err().contains("id"));
        assert!(Incoming::parse("[").is_err());
    }

    #[test]
    fn the_signature_payload_is_the_documented_string() {
        let scopes = vec!["operator.read".to_owned(), "operator.write".to_owned()];
        let s = signature_payload(&SignatureInput {
            device_id: "dev",
            client_id: "gateway-client",
            client_mode: "backend",
            role: "operator",
            scopes: &scopes,
            signed_at: 42,
            token: Some("tok"),
            nonce: "n",
            platform: "Linux",
            device_family: None,
        });
        assert_eq!(s, "v3|dev|gateway-client|backend|operator|operator.read,operator.write|42|tok|n|linux|");
    }
}
