//! API keys and the audit log on PostgreSQL.
//!
//! A call that spans tenants (looking a key up by hash, managing keys,
//! appending and pruning the audit log) runs in a transaction marked with
//! `godel.sweep` (`keys` or `audit`), which the row-level security policies
//! of the migrations let through; a listing for one tenant runs scoped to it
//! like every other tenant's call.

use async_trait::async_trait;
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash};
use crate::ids::{KeyId, TenantId};
use crate::store::postgres::{PostgresStore, ROWS, Tx, db_err};
use crate::store::sql::{self, AuditRow, KeyRow};
use crate::store::{Credentials, Page, Result, StoreError};
use crate::time::Timestamp;

/// The columns of `api_keys` in the order of [`KeyRow`].
const KEY_COLUMNS: &str =
    "id::text, hash, name, tenant, role, prefix, created_at, expires_at, last_used_at, revoked_at";

/// The columns of `audit_log` in the order of [`AuditRow`].
const AUDIT_COLUMNS: &str =
    "seq, at, credential, tenant, role, action, target, outcome, status::bigint, request_id, source";

/// What a transaction that spans tenants may reach (see the migrations).
#[derive(Clone, Copy)]
enum Sweep {
    Keys,
    Audit,
}

impl PostgresStore {
    /// A transaction the row-level security lets at every tenant's keys or
    /// audit entries. An audit append also takes the audit log's insert lock,
    /// for the reason [`begin_insert`](Self::begin_insert) gives.
    async fn begin_sweep(&self, sweep: Sweep) -> Result<Tx> {
        let sql = match sweep {
            Sweep::Keys => "BEGIN; SELECT set_config('godel.sweep', 'keys', true)".to_owned(),
            Sweep::Audit => format!(
                "BEGIN; SELECT set_config('godel.sweep', 'audit', true), \
                 pg_advisory_xact_lock(hashtext('{}'), hashtext('audit_log'))",
                self.inner.schema
            ),
        };
        self.inner.pool.begin_with(sql).await.map_err(db_err)
    }

    /// Changes one key with `set` (which binds `$1`) and returns it.
    async fn update_key(&self, id: &KeyId, set: &str, value: i64) -> Result<ApiKey> {
        let sql = format!("UPDATE api_keys SET {set} WHERE id = $2::uuid RETURNING {KEY_COLUMNS}");
        scoped!(@begin self.begin_sweep(Sweep::Keys), |conn| async move {
            let row: Option<KeyRow> =
                sqlx::query_as(&sql).bind(value).bind(id.to_string()).fetch_optional(conn).await.map_err(db_err)?;
            ROWS.key(row.ok_or(StoreError::KeyNotFound(*id))?)
        })
    }
}

/// One key by `column` (`id` or `hash`), on a keys sweep.
async fn key_where(conn: &mut PgConnection, column: &str, value: String) -> Result<Option<ApiKey>> {
    let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE {column} = $1");
    let row: Option<KeyRow> = sqlx::query_as(&sql).bind(value).fetch_optional(conn).await.map_err(db_err)?;
    row.map(|r| ROWS.key(r)).transpose()
}

/// The keys of `tenant` (of all with `None`), newest first.
async fn keys_of(conn: &mut PgConnection, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>> {
    let sql = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at DESC, id DESC"
    );
    let rows: Vec<KeyRow> =
        sqlx::query_as(&sql).bind(tenant.map(TenantId::as_str)).fetch_all(conn).await.map_err(db_err)?;
    rows.into_iter().map(|r| ROWS.key(r)).collect()
}

/// The rows of an audit listing (see [`sql::push_audit_query`]).
async fn audit_rows(conn: &mut PgConnection, query: &AuditQuery, below: Option<i64>) -> Result<Vec<AuditEntry>> {
    let mut qb = QueryBuilder::<Postgres>::new(format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE true"));
    sql::push_audit_query(&mut qb, query, below);
    let rows: Vec<AuditRow> = qb.build_query_as().fetch_all(conn).await.map_err(db_err)?;
    rows.into_iter().map(|r| ROWS.audit(r)).collect()
}

#[async_trait]
impl Credentials for PostgresStore {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        scoped!(@begin self.begin_sweep(Sweep::Keys), |conn| async move {
            let done = sqlx::query(
                "INSERT INTO api_keys (id, hash, name, tenant, role, prefix, created_at, expires_at, last_used_at, \
                 revoked_at) VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
            .bind(key.id.to_string())
            .bind(key.hash.to_hex())
            .bind(&key.name)
            .bind(key.tenant.as_str())
            .bind(key.role.as_str())
            .bind(&key.prefix)
            .bind(key.created_at.as_millis())
            .bind(key.expires_at.map(Timestamp::as_millis))
            .bind(key.last_used_at.map(Timestamp::as_millis))
            .bind(key.revoked_at.map(Timestamp::as_millis))
            .execute(conn)
            .await
            .map_err(db_err)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("key {}", key.id)));
            }
            Ok(())
        })
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        scoped!(@begin self.begin_sweep(Sweep::Keys), |conn| key_where(conn, "hash", hash.to_hex()))
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        let key = scoped!(@begin self.begin_sweep(Sweep::Keys), |conn| key_where(conn, "id::text", id.to_string()))?;
        key.ok_or(StoreError::KeyNotFound(*id))
    }

    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>> {
        match tenant {
            Some(t) => scoped!(self, t, |conn| keys_of(conn, tenant)),
            None => scoped!(@begin self.begin_sweep(Sweep::Keys), |conn| keys_of(conn, tenant)),
        }
    }

    async fn revoke_key(&self, id: &KeyId, now: Timestamp) -> Result<ApiKey> {
        self.update_key(id, "revoked_at = coalesce(revoked_at, $1)", now.as_millis()).await
    }

    async fn expire_key(&self, id: &KeyId, at: Timestamp) -> Result<ApiKey> {
        // LEAST ignores NULL: a key without an expiry gets `at`.
        self.update_key(id, "expires_at = LEAST(expires_at, $1)", at.as_millis()).await
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<String>, Vec<i64>) = sql::latest_uses(used).into_iter().unzip();
        scoped!(@begin self.begin_sweep(Sweep::Keys), |conn| async move {
            // GREATEST ignores NULL: a key never used gets the time given.
            sqlx::query(
                "UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at) \
                 FROM unnest($1::text[], $2::bigint[]) AS u (id, at) WHERE k.id = u.id::uuid",
            )
            .bind(ids)
            .bind(times)
            .execute(conn)
            .await
            .map_err(db_err)?;
            Ok(())
        })
    }

    async fn has_keys(&self) -> Result<bool> {
        scoped!(@begin self.begin_sweep(Sweep::Keys), |conn| async move {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)").fetch_one(conn).await.map_err(db_err)
        })
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        scoped!(@begin self.begin_sweep(Sweep::Audit), |conn| async move {
            for chunk in entries.chunks(sql::AUDIT_CHUNK) {
                let mut qb = QueryBuilder::<Postgres>::new(sql::AUDIT_INSERT);
                sql::push_audit_values(&mut qb, chunk);
                qb.build().execute(&mut *conn).await.map_err(db_err)?;
            }
            Ok(())
        })
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let below = crate::store::audit_start(query)?;
        let entries = match &query.tenant {
            Some(t) => scoped!(self, t, |conn| audit_rows(conn, query, below))?,
            None => scoped!(@begin self.begin_sweep(Sweep::Audit), |conn| audit_rows(conn, query, below))?,
        };
        Ok(crate::store::audit_page(entries, query.limit))
    }

    async fn prune_audit(&self, before: Timestamp, limit: usize) -> Result<u64> {
        scoped!(@begin self.begin_sweep(Sweep::Audit), |conn| async move {
            let done = sqlx::query(
                "DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log WHERE at < $1 ORDER BY seq LIMIT $2)",
            )
            .bind(before.as_millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(conn)
            .await
            .map_err(db_err)?;
            Ok(done.rows_affected())
        })
    }
}
