//! Who may do what: roles, the stored record of an API key, and the audit
//! log's entries.
//!
//! These are plain values at the bottom of the crate. The store keeps them
//! (`store::Credentials`); the server authenticates requests with them. A key's
//! plaintext never appears here: the store holds only its SHA-256 hash, and
//! nothing in this module can print a hash in full.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{InvalidInput, KeyId, TenantId, Timestamp};

/// What a credential may do. The server's route table says which roles may
/// call each route; see `docs/security.md`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including keys, gateways, the audit log and other tenants.
    Admin,
    /// Runs the queue: everything a submitter may, plus purges, dead-letter
    /// replays, agents and sessions.
    Operator,
    /// Submits, cancels and retries tasks, and reads.
    Submitter,
    /// Reads.
    Viewer,
    /// A remote `godel worker`: connects to the workers endpoint and nothing else.
    Worker,
}

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Role; 5] = [Role::Admin, Role::Operator, Role::Submitter, Role::Viewer, Role::Worker];

    /// The role's name as the API and configuration spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        Role::ALL.into_iter().find(|r| r.as_str() == s).ok_or_else(|| {
            InvalidInput::new("role", format!("expected one of admin, operator, submitter, viewer, worker, got {s:?}"))
        })
    }
}

/// The SHA-256 hash of a key's plaintext: what the store keeps and looks
/// keys up by. `Debug` shows only its first four bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    /// The hash in lowercase hex, as the SQL and Redis backends store it.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Result<Self, InvalidInput> {
        let bad = || InvalidInput::new("key hash", "expected 64 hex digits");
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(KeyHash(out))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// A key as the store keeps it: everything but the plaintext.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ApiKey {
    /// Names the key in lists, revocations and the audit log.
    pub id: KeyId,
    /// A label chosen at creation (1 to 64 characters from `A-Z a-z 0-9 . _ -`).
    pub name: String,
    /// The tenant every request made with the key acts as.
    pub tenant: TenantId,
    /// What the key may do.
    pub role: Role,
    /// SHA-256 of the plaintext.
    pub hash: KeyHash,
    /// The plaintext's first characters (`gdl_` and a few more), to recognise a key.
    pub prefix: String,
    /// When the key was made.
    pub created_at: Timestamp,
    /// After this instant the key no longer authenticates.
    pub expires_at: Option<Timestamp>,
    /// The last time it authenticated a request (kept to within a minute or so).
    pub last_used_at: Option<Timestamp>,
    /// When it was revoked; a revoked key never authenticates again.
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    /// Whether the key authenticates at `now`: not revoked, not expired.
    pub fn usable(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }

    /// Checks a key's name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`.
    pub fn validate_name(name: &str) -> Result<(), InvalidInput> {
        if name.is_empty() || name.len() > 64 {
            return Err(InvalidInput::new("name", format!("expected 1 to 64 characters, got {}", name.len())));
        }
        if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(InvalidInput::new(
                "name",
                format!("character {c:?} is not allowed (use A-Z, a-z, 0-9, ., _ or -)"),
            ));
        }
        Ok(())
    }
}

/// How a request the audit log records ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// Authorized and carried out.
    Allowed,
    /// Refused before it ran: no or bad credential, a role without the right,
    /// a cross-site request, a rate limit.
    Denied,
    /// Authorized, but it failed (bad input, not found, a conflict).
    Failed,
}

impl AuditOutcome {
    /// The outcome as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Allowed => "allowed",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Failed => "failed",
        }
    }
}

impl FromStr for AuditOutcome {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Self, InvalidInput> {
        [AuditOutcome::Allowed, AuditOutcome::Denied, AuditOutcome::Failed]
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| InvalidInput::new("outcome", format!("expected allowed, denied or failed, got {s:?}")))
    }
}

/// One line of the append-only audit log: a mutating request, or a refused one.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditEntry {
    /// Order of appending; assigned by the store (pass 0 when appending).
    pub seq: u64,
    /// When the request arrived.
    pub at: Timestamp,
    /// The key id or the JWT subject that made it; `None` when there was no
    /// valid credential.
    pub credential: Option<String>,
    /// The tenant it acted as (the default tenant when unauthenticated).
    pub tenant: TenantId,
    /// The credential's role, when there was one.
    pub role: Option<Role>,
    /// What was asked, e.g. `tasks.create`, `keys.revoke`, `auth.failed`.
    pub action: String,
    /// What it was asked of: a task id, a key id, a gateway name.
    pub target: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// The HTTP status of the answer.
    pub status: u16,
    /// The request's id, as in the `x-request-id` response header.
    pub request_id: String,
    /// The peer's IP address.
    pub source: String,
}

/// Which audit entries to list, newest first.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditQuery {
    /// Only this tenant's entries; `None` lists every tenant (admins only).
    pub tenant: Option<TenantId>,
    /// Entries at or after this instant.
    pub since: Option<Timestamp>,
    /// Entries before this instant.
    pub until: Option<Timestamp>,
    /// An action (`tasks.create`) or a prefix ending in a dot (`tasks.`).
    pub action: Option<String>,
    /// Only entries with this outcome.
    pub outcome: Option<AuditOutcome>,
    /// Only entries made with this credential.
    pub credential: Option<String>,
    /// At most this many entries (1 to 100).
    pub limit: usize,
    /// Where the previous page ended (opaque, from `Page::next_cursor`).
    pub cursor: Option<String>,
}

impl Default for AuditQuery {
    fn default() -> Self {
        Self {
            tenant: None,
            since: None,
            until: None,
            action: None,
            outcome: None,
            credential: None,
            limit: 20,
            cursor: None,
        }
    }
}

impl AuditQuery {
    /// Whether `entry` passes the filters (not the cursor or the limit).
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.tenant.as_ref().is_none_or(|t| *t == entry.tenant)
            && self.since.is_none_or(|s| entry.at >= s)
            && self.until.is_none_or(|u| entry.at < u)
            && self
                .action
                .as_deref()
                .is_none_or(|a| if a.ends_with('.') { entry.action.starts_with(a) } else { entry.action == a })
            && self.outcome.is_none_or(|o| o == entry.outcome)
            && self.credential.as_deref().is_none_or(|c| entry.credential.as_deref() == Some(c))
    }

    /// Checks the limit's range.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if !(1..=100).contains(&self.limit) {
            return Err(InvalidInput::new("limit", format!("expected 1 to 100, got {}", self.limit)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_name_the_choices() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert_eq!("root".parse::<Role>().unwrap_err().field, "role");
    }

    #[test]
    fn hashes_print_only_their_start() {
        let hash = KeyHash([0xab; 32]);
        assert_eq!(KeyHash::from_hex(&hash.to_hex()).unwrap(), hash);
        assert_eq!(format!("{hash:?}"), "KeyHash(abababab…)");
        assert!(KeyHash::from_hex("zz").is_err());
    }

    #[test]
    fn a_key_is_usable_until_it_expires_or_is_revoked() {
        let mut key = ApiKey {
            id: KeyId::new(),
            name: "ci".into(),
            tenant: TenantId::default_tenant(),
            role: Role::Submitter,
            hash: KeyHash([1; 32]),
            prefix: "gdl_abcdefgh".into(),
            created_at: Timestamp::from_millis(1_000),
            expires_at: Some(Timestamp::from_millis(2_000)),
            last_used_at: None,
            revoked_at: None,
        };
        assert!(key.usable(Timestamp::from_millis(1_999)));
        assert!(!key.usable(Timestamp::from_millis(2_000)));
        key.expires_at = None;
        key.revoked_at = Some(Timestamp::from_millis(1_500));
        assert!(!key.usable(Timestamp::from_millis(1_600)));
        assert!(ApiKey::validate_name("a b").is_err());
    }
}
