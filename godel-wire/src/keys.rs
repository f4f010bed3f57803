//! API keys: a key as `/api/v1/keys` shows it (never its hash), the bodies
//! that create and rotate one, and the answers that carry a new key's
//! secret, the one time the server shows it.

use std::fmt;

use godel_core::{KeyId, Role, Timestamp};
use serde::{Deserialize, Serialize};

/// A key as the API shows it: everything but its hash and its secret.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
pub struct KeyView {
    /// Names the key in lists, revocations and the audit log.
    #[serde(with = "crate::text")]
    pub id: KeyId,
    /// The label chosen at creation.
    pub name: String,
    /// The tenant the key acts as.
    pub tenant: String,
    /// What the key may do.
    pub role: Role,
    /// The secret's first characters (`gdl_` and eight more), to recognise it.
    pub prefix: String,
    /// When it was made.
    #[serde(with = "crate::text")]
    pub created_at: Timestamp,
    /// After this instant it no longer authenticates.
    #[serde(default, with = "crate::text::opt")]
    pub expires_at: Option<Timestamp>,
    /// The last time it authenticated a request (to within a minute or so).
    #[serde(default, with = "crate::text::opt")]
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked.
    #[serde(default, with = "crate::text::opt")]
    pub revoked_at: Option<Timestamp>,
}

/// The body of `POST /api/v1/keys`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
    pub name: String,
    /// What the key may do.
    pub role: Role,
    /// The tenant it acts as (default: the server's default tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// How long it lives, as a duration (`30d`, `12h`), from 1 minute to 5
    /// years; without it the key does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
}

/// The body of `POST /api/v1/keys/{id}/rotate`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// How long the old key keeps working (`0s` to `30d`, default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace: Option<String>,
}

/// A new key and its secret: the answer to a creation. The secret is shown
/// this once; `Debug` does not print it.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CreatedKey {
    /// The key.
    pub key: KeyView,
    /// The whole key, to send as `Authorization: Bearer <secret>`.
    pub secret: String,
}

/// The answer to a rotation: a new key with the old one's name, tenant and
/// role, and the old key with its new expiry. `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RotatedKey {
    /// The new key.
    pub key: KeyView,
    /// The new key's secret, shown this once.
    pub secret: String,
    /// The old key, which expires at the end of the grace period.
    pub previous: KeyView,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedKey").field("key", &self.key).finish_non_exhaustive()
    }
}

impl fmt::Debug for RotatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatedKey").field("key", &self.key).field("previous", &self.previous).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_and_bodies_are_strict() {
        let key = KeyView {
            id: KeyId::new(),
            name: "ci".into(),
            tenant: "default".into(),
            role: Role::Submitter,
            prefix: "gdl_abcdefgh".into(),
            created_at: Timestamp::from_millis(1_000),
            expires_at: None,
            last_used_at: None,
            revoked_at: None,
        };
        let created = CreatedKey { key: key.clone(), secret: "gdl_secret-value".into() };
        assert!(!format!("{created:?}").contains("secret-value"));
        let rotated = RotatedKey { key: key.clone(), secret: "gdl_secret-value".into(), previous: key };
        assert!(!format!("{rotated:?}").contains("secret-value"));
        let unknown = serde_json::from_str::<CreateKey>(r#"{"name":"ci","role":"viewer","scope":"x"}"#);
        assert!(unknown.unwrap_err().to_string().contains("scope"));
    }
}
