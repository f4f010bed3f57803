//! The registry on SQLite.

use async_trait::async_trait;
use sqlx::Row;

use crate::ids::TenantId;
use crate::store::sqlite::{SqliteStore, backend_err, db_err};
use crate::store::{Member, MemberKind, Registry, Result};
use crate::time::Timestamp;

#[async_trait]
impl Registry for SqliteStore {
    async fn put_member(&self, member: &Member) -> Result<()> {
        member.validate()?;
        sqlx::query(
            "INSERT OR REPLACE INTO members (tenant, kind, id, node, doc, updated_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(member.tenant.as_str())
        .bind(member.kind.as_str())
        .bind(&member.id)
        .bind(&member.node)
        .bind(member.doc.to_string())
        .bind(member.updated_at.as_millis())
        .bind(member.expires_at.as_millis())
        .execute(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM members WHERE tenant = ? AND kind = ? AND id = ?")
            .bind(tenant.as_str())
            .bind(kind.as_str())
            .bind(id)
            .execute(&mut *self.writer().await?)
            .await
            .map_err(db_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        let rows = sqlx::query(
            "SELECT id, node, doc, updated_at, expires_at FROM members \
             WHERE tenant = ? AND kind = ? AND expires_at > ? ORDER BY id",
        )
        .bind(tenant.as_str())
        .bind(kind.as_str())
        .bind(now.as_millis())
        .fetch_all(&self.reader)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|row| {
                let doc: String = row.try_get(2).map_err(db_err)?;
                Ok(Member {
                    tenant: tenant.clone(),
                    kind,
                    id: row.try_get(0).map_err(db_err)?,
                    node: row.try_get(1).map_err(db_err)?,
                    doc: serde_json::from_str(&doc).map_err(backend_err)?,
                    updated_at: Timestamp::from_millis(row.try_get(3).map_err(db_err)?),
                    expires_at: Timestamp::from_millis(row.try_get(4).map_err(db_err)?),
                })
            })
            .collect()
    }
}
