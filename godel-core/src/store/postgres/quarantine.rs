//! Rows that do not decode, on PostgreSQL: moving them from `tasks` to the
//! `quarantine` table in the caller's transaction, and reading and deleting
//! what is there.

use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use crate::ids::{TaskId, TenantId};
use crate::store::postgres::{PostgresStore, db_err};
use crate::store::sql::Corrupt;
use crate::store::{Page, QuarantineQuery, Quarantined, Result, StoreError, quarantine_page};

/// Moves the rows that did not decode from `tasks` to `quarantine` on
/// `conn` (inside the caller's transaction) and returns what was moved. A
/// row that is gone already (moved or purged meanwhile) is skipped. Its
/// history goes with it (`task_history` has no foreign key to cascade).
pub(super) async fn quarantine(
    conn: &mut PgConnection,
    tenant: &TenantId,
    rows: Vec<Corrupt>,
) -> Result<Vec<Quarantined>> {
    let mut moved = Vec::with_capacity(rows.len());
    for row in rows {
        let stored: Option<String> = sqlx::query_scalar(
            "WITH gone AS (DELETE FROM tasks t WHERE t.seq = $1 AND t.tenant = $2 RETURNING t.*), \
                  history AS (DELETE FROM task_history WHERE task_seq = (SELECT seq FROM gone)) \
             INSERT INTO quarantine (seq, tenant, id, error, raw) \
             SELECT g.seq, g.tenant, g.id::text, $3, row_to_json(g)::text FROM gone g \
             ON CONFLICT DO NOTHING RETURNING raw",
        )
        .bind(row.seq)
        .bind(tenant.as_str())
        .bind(&row.error)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_err)?;
        if let Some(raw) = stored {
            tracing::warn!(tenant = %tenant, task = %row.id, error = %row.error, "quarantined a task row that does not decode");
            moved.push(Quarantined { id: row.id, error: row.error, raw });
        }
    }
    Ok(moved)
}

impl PostgresStore {
    pub(super) async fn quarantine_list(
        &self,
        tenant: &TenantId,
        query: &QuarantineQuery,
    ) -> Result<Page<Quarantined>> {
        let after = query.validate()?.unwrap_or(0);
        let limit = i64::try_from(query.limit + 1).unwrap_or(i64::MAX);
        let rows = scoped!(self, tenant, |conn| async move {
            sqlx::query(
                "SELECT seq, id, error, raw FROM quarantine WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(tenant.as_str())
            .bind(after)
            .bind(limit)
            .fetch_all(conn)
            .await
            .map_err(db_err)
        })?;
        let rows = rows.iter().map(|r| Ok((r.try_get(0).map_err(db_err)?, decode(r)?))).collect::<Result<_>>()?;
        Ok(quarantine_page(rows, query.limit))
    }

    pub(super) async fn quarantine_get(&self, tenant: &TenantId, id: TaskId) -> Result<Quarantined> {
        let row = scoped!(self, tenant, |conn| async move {
            sqlx::query("SELECT seq, id, error, raw FROM quarantine WHERE tenant = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id.to_string())
                .fetch_optional(conn)
                .await
                .map_err(db_err)
        })?
        .ok_or(StoreError::NotFound(id))?;
        decode(&row)
    }

    pub(super) async fn quarantine_drop(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let done = scoped!(self, tenant, |conn| async move {
            sqlx::query("DELETE FROM quarantine WHERE tenant = $1 AND id = $2")
                .bind(tenant.as_str())
                .bind(id.to_string())
                .execute(conn)
                .await
                .map_err(db_err)
        })?;
        if done.rows_affected() == 0 { Err(StoreError::NotFound(id)) } else { Ok(()) }
    }

    pub(super) async fn quarantine_purge(&self, tenant: &TenantId) -> Result<u64> {
        let done = scoped!(self, tenant, |conn| async move {
            sqlx::query("DELETE FROM quarantine WHERE tenant = $1")
                .bind(tenant.as_str())
                .execute(conn)
                .await
                .map_err(db_err)
        })?;
        Ok(done.rows_affected())
    }
}

/// A `quarantine` row: seq, id, error, raw.
fn decode(row: &PgRow) -> Result<Quarantined> {
    Ok(Quarantined {
        id: row.try_get(1).map_err(db_err)?,
        error: row.try_get(2).map_err(db_err)?,
        raw: row.try_get(3).map_err(db_err)?,
    })
}
