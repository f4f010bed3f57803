//! Rows that do not decode, on SQLite: moving them from `tasks` to the
//! `quarantine` table, and reading and deleting what is there.

use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, Row, SqliteConnection};

use crate::ids::{TaskId, TenantId};
use crate::store::sql::Corrupt;
use crate::store::sqlite::decode::COLUMNS;
use crate::store::sqlite::{SqliteStore, db_err};
use crate::store::{Page, QuarantineQuery, Quarantined, Result, StoreError, quarantine_page};

/// Moves the rows that did not decode from `tasks` to `quarantine`, one
/// transaction for all, and returns what was moved. A row that is gone
/// already (moved or purged meanwhile) is skipped.
pub(super) async fn quarantine(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    rows: Vec<Corrupt>,
) -> Result<Vec<Quarantined>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Each column as stored, under its own name; text that is not JSON stays a string.
    let raw: Vec<String> = COLUMNS.split(", ").map(|c| format!("'{c}', {c}")).collect();
    let insert = format!(
        "INSERT INTO quarantine (seq, tenant, id, error, raw) \
         SELECT seq, tenant, coalesce(id, ''), ?1, json_object({}) FROM tasks WHERE seq = ?2 AND tenant = ?3 \
         ON CONFLICT DO NOTHING RETURNING raw",
        raw.join(", ")
    );
    let mut tx = conn.begin().await.map_err(db_err)?;
    let mut moved = Vec::with_capacity(rows.len());
    for row in rows {
        let stored: Option<String> = sqlx::query_scalar(&insert)
            .bind(&row.error)
            .bind(row.seq)
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
        sqlx::query("DELETE FROM tasks WHERE seq = ?1 AND tenant = ?2")
            .bind(row.seq)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        if let Some(raw) = stored {
            tracing::warn!(tenant = %tenant, task = %row.id, error = %row.error, "quarantined a task row that does not decode");
            moved.push(Quarantined { id: row.id, error: row.error, raw });
        }
    }
    tx.commit().await.map_err(db_err)?;
    Ok(moved)
}

impl SqliteStore {
    pub(super) async fn quarantine_list(
        &self,
        tenant: &TenantId,
        query: &QuarantineQuery,
    ) -> Result<Page<Quarantined>> {
        let after = query.validate()?.unwrap_or(0);
        let rows = sqlx::query(
            "SELECT seq, id, error, raw FROM quarantine WHERE tenant = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(tenant.as_str())
        .bind(after)
        .bind(i64::try_from(query.limit + 1).unwrap_or(i64::MAX))
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        let rows = rows.iter().map(|r| Ok((r.try_get(0).map_err(db_err)?, decode(r)?))).collect::<Result<_>>()?;
        Ok(quarantine_page(rows, query.limit))
    }

    pub(super) async fn quarantine_get(&self, tenant: &TenantId, id: TaskId) -> Result<Quarantined> {
        let row = sqlx::query("SELECT seq, id, error, raw FROM quarantine WHERE tenant = ?1 AND id = ?2")
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?
            .ok_or(StoreError::NotFound(id))?;
        decode(&row)
    }

    pub(super) async fn quarantine_drop(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let done = sqlx::query("DELETE FROM quarantine WHERE tenant = ?1 AND id = ?2")
            .bind(tenant.as_str())
            .bind(id.to_string())
            .execute(&mut *self.writer().await?)
            .await
            .map_err(db_err)?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound(id)) } else { Ok(()) }
    }

    pub(super) async fn quarantine_purge(&self, tenant: &TenantId) -> Result<u64> {
        let done = sqlx::query("DELETE FROM quarantine WHERE tenant = ?1")
            .bind(tenant.as_str())
            .execute(&mut *self.writer().await?)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected())
    }
}

/// A `quarantine` row: seq, id, error, raw.
fn decode(row: &SqliteRow) -> Result<Quarantined> {
    Ok(Quarantined {
        id: row.try_get(1).map_err(db_err)?,
        error: row.try_get(2).map_err(db_err)?,
        raw: row.try_get(3).map_err(db_err)?,
    })
}
