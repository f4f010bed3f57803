//! API keys and audit entries as both SQL backends read them back: each
//! backend selects the columns in the order of [`KeyRow`] and [`AuditRow`]
//! (casting where its types differ), and the values are decoded once here.

use std::collections::HashMap;

use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash, Role};
use crate::ids::KeyId;
use crate::store::Result;
use crate::store::sql::Rows;
use crate::time::Timestamp;

/// An `api_keys` row: id, hash (hex), name, tenant, role, prefix,
/// created_at, expires_at, last_used_at, revoked_at.
pub(crate) type KeyRow = (String, String, String, String, String, String, i64, Option<i64>, Option<i64>, Option<i64>);

/// An `audit_log` row: seq, at, credential, tenant, role, action, target,
/// outcome, status, request_id, source.
pub(crate) type AuditRow =
    (i64, i64, Option<String>, String, Option<String>, String, Option<String>, String, i64, String, String);

impl Rows {
    /// Decodes a [`KeyRow`].
    pub(crate) fn key(self, row: KeyRow) -> Result<ApiKey> {
        let (id, hash, name, tenant, role, prefix, created_at, expires_at, last_used_at, revoked_at) = row;
        Ok(ApiKey {
            id: self.parse(&id, "id")?,
            name,
            tenant: self.parse(&tenant, "tenant")?,
            role: self.parse(&role, "role")?,
            hash: KeyHash::from_hex(&hash).map_err(|e| self.corrupt(format!("column hash: {e}")))?,
            prefix,
            created_at: Timestamp::from_millis(created_at),
            expires_at: expires_at.map(Timestamp::from_millis),
            last_used_at: last_used_at.map(Timestamp::from_millis),
            revoked_at: revoked_at.map(Timestamp::from_millis),
        })
    }

    /// Decodes an [`AuditRow`].
    pub(crate) fn audit(self, row: AuditRow) -> Result<AuditEntry> {
        let (seq, at, credential, tenant, role, action, target, outcome, status, request_id, source) = row;
        Ok(AuditEntry {
            seq: u64::try_from(seq).map_err(|_| self.corrupt(format!("audit seq {seq} is negative")))?,
            at: Timestamp::from_millis(at),
            credential,
            tenant: self.parse(&tenant, "tenant")?,
            role: role.map(|r| self.parse(&r, "role")).transpose()?,
            action,
            target,
            outcome: self.parse(&outcome, "outcome")?,
            status: u16::try_from(status)
                .map_err(|_| self.corrupt(format!("audit status {status} is out of range")))?,
            request_id,
            source,
        })
    }
}

/// Appends ` AND …` for each filter of an audit query, then its page: below
/// `below` (from [`audit_start`](crate::store::audit_start)), newest first,
/// one row more than the page holds so that
/// [`audit_page`](crate::store::audit_page) can tell whether another follows.
pub(crate) fn push_audit_query<'a, DB>(qb: &mut QueryBuilder<'a, DB>, query: &'a AuditQuery, below: Option<i64>)
where
    DB: Database,
    &'a str: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    if let Some(tenant) = &query.tenant {
        qb.push(" AND tenant = ").push_bind(tenant.as_str());
    }
    if let Some(t) = query.since {
        qb.push(" AND at >= ").push_bind(t.as_millis());
    }
    if let Some(t) = query.until {
        qb.push(" AND at < ").push_bind(t.as_millis());
    }
    match query.action.as_deref() {
        // A prefix: compared as one (LIKE would treat `_` as a wildcard).
        Some(prefix) if prefix.ends_with('.') => {
            qb.push(format!(" AND substr(action, 1, {}) = ", prefix.chars().count())).push_bind(prefix);
        }
        Some(action) => {
            qb.push(" AND action = ").push_bind(action);
        }
        None => {}
    }
    if let Some(outcome) = query.outcome {
        qb.push(" AND outcome = ").push_bind(outcome.as_str());
    }
    if let Some(credential) = query.credential.as_deref() {
        qb.push(" AND credential = ").push_bind(credential);
    }
    if let Some(below) = below {
        qb.push(" AND seq < ").push_bind(below);
    }
    qb.push(" ORDER BY seq DESC LIMIT ").push_bind(i64::try_from(query.limit + 1).unwrap_or(i64::MAX));
}

/// Appends the `VALUES` of an insert into `audit_log` (every column but `seq`,
/// in the order of [`AUDIT_INSERT`]) for `entries`.
pub(crate) fn push_audit_values<'a, DB>(qb: &mut QueryBuilder<'a, DB>, entries: &'a [AuditEntry])
where
    DB: Database,
    &'a str: Encode<'a, DB> + Type<DB>,
    Option<&'a str>: Encode<'a, DB> + Type<DB>,
    i64: Encode<'a, DB> + Type<DB>,
{
    qb.push_values(entries, |mut row, e| {
        row.push_bind(e.at.as_millis())
            .push_bind(e.credential.as_deref())
            .push_bind(e.tenant.as_str())
            .push_bind(e.role.map(Role::as_str))
            .push_bind(e.action.as_str())
            .push_bind(e.target.as_deref())
            .push_bind(e.outcome.as_str())
            .push_bind(i64::from(e.status))
            .push_bind(e.request_id.as_str())
            .push_bind(e.source.as_str());
    });
}

/// The head of an insert into `audit_log`, before [`push_audit_values`].
pub(crate) const AUDIT_INSERT: &str =
    "INSERT INTO audit_log (at, credential, tenant, role, action, target, outcome, status, request_id, source) ";

/// Most audit entries one insert carries: ten parameters each, well under
/// both backends' limits on parameters per statement.
pub(crate) const AUDIT_CHUNK: usize = 1_000;

/// The last time each key was used among `used`: one entry per key, so that
/// a batched update touches each row once.
pub(crate) fn latest_uses(used: &[(KeyId, Timestamp)]) -> Vec<(String, i64)> {
    let mut latest: HashMap<KeyId, Timestamp> = HashMap::with_capacity(used.len());
    for (id, at) in used {
        latest.entry(*id).and_modify(|t| *t = (*t).max(*at)).or_insert(*at);
    }
    latest.into_iter().map(|(id, at)| (id.to_string(), at.as_millis())).collect()
}
