//! API keys and the audit log on SQLite.

use async_trait::async_trait;
use sqlx::{QueryBuilder, Sqlite};

use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash};
use crate::ids::{KeyId, TenantId};
use crate::store::sql::{self, AuditRow, KeyRow};
use crate::store::sqlite::{ROWS, SqliteStore, backend_err, db_err};
use crate::store::{Credentials, Page, Result, StoreError};
use crate::time::Timestamp;

/// The columns of `api_keys` in the order of [`KeyRow`].
const KEY_COLUMNS: &str = "id, hash, name, tenant, role, prefix, created_at, expires_at, last_used_at, revoked_at";

/// The columns of `audit_log` in the order of [`AuditRow`].
const AUDIT_COLUMNS: &str = "seq, at, credential, tenant, role, action, target, outcome, status, request_id, source";

impl SqliteStore {
    /// Changes one key with `set` (which binds `?1`) and returns it.
    async fn update_key(&self, id: &KeyId, set: &str, value: i64) -> Result<ApiKey> {
        let sql = format!("UPDATE api_keys SET {set} WHERE id = ?2 RETURNING {KEY_COLUMNS}");
        let row: Option<KeyRow> = sqlx::query_as(&sql)
            .bind(value)
            .bind(id.to_string())
            .fetch_optional(&mut *self.writer().await?)
            .await
            .map_err(db_err)?;
        ROWS.key(row.ok_or(StoreError::KeyNotFound(*id))?)
    }
}

#[async_trait]
impl Credentials for SqliteStore {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let done = sqlx::query(
            "INSERT INTO api_keys (id, hash, name, tenant, role, prefix, created_at, expires_at, last_used_at, \
             revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
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
        .execute(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!("key {}", key.id)));
        }
        Ok(())
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?");
        let row: Option<KeyRow> =
            sqlx::query_as(&sql).bind(hash.to_hex()).fetch_optional(&self.reader).await.map_err(db_err)?;
        row.map(|r| ROWS.key(r)).transpose()
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?");
        let row: Option<KeyRow> =
            sqlx::query_as(&sql).bind(id.to_string()).fetch_optional(&self.reader).await.map_err(db_err)?;
        ROWS.key(row.ok_or(StoreError::KeyNotFound(*id))?)
    }

    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE ?1 IS NULL OR tenant = ?1 ORDER BY created_at DESC, id DESC"
        );
        let rows: Vec<KeyRow> =
            sqlx::query_as(&sql).bind(tenant.map(TenantId::as_str)).fetch_all(&self.reader).await.map_err(db_err)?;
        rows.into_iter().map(|r| ROWS.key(r)).collect()
    }

    async fn revoke_key(&self, id: &KeyId, now: Timestamp) -> Result<ApiKey> {
        self.update_key(id, "revoked_at = coalesce(revoked_at, ?1)", now.as_millis()).await
    }

    async fn expire_key(&self, id: &KeyId, at: Timestamp) -> Result<ApiKey> {
        self.update_key(id, "expires_at = min(coalesce(expires_at, ?1), ?1)", at.as_millis()).await
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let latest = serde_json::to_string(&sql::latest_uses(used)).map_err(backend_err)?;
        sqlx::query(
            "UPDATE api_keys SET last_used_at = max(coalesce(last_used_at, u.at), u.at) \
             FROM (SELECT value ->> 0 AS id, value ->> 1 AS at FROM json_each(?)) AS u \
             WHERE api_keys.id = u.id",
        )
        .bind(latest)
        .execute(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn has_keys(&self) -> Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)").fetch_one(&self.reader).await.map_err(db_err)
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *writer).await.map_err(db_err)?;
        for chunk in entries.chunks(sql::AUDIT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(sql::AUDIT_INSERT);
            sql::push_audit_values(&mut qb, chunk);
            qb.build().execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let below = crate::store::audit_start(query)?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE 1 = 1"));
        sql::push_audit_query(&mut qb, query, below);
        let rows: Vec<AuditRow> = qb.build_query_as().fetch_all(&self.reader).await.map_err(db_err)?;
        let entries = rows.into_iter().map(|r| ROWS.audit(r)).collect::<Result<Vec<_>>>()?;
        Ok(crate::store::audit_page(entries, query.limit))
    }

    async fn prune_audit(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM audit_log WHERE seq IN (SELECT seq FROM audit_log WHERE at < ? ORDER BY seq LIMIT ?)",
        )
        .bind(before.as_millis())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}
