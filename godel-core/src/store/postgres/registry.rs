//! The registry on PostgreSQL.

use async_trait::async_trait;
use sqlx::Row;

use crate::ids::TenantId;
use crate::store::postgres::{PostgresStore, ROWS, db_err};
use crate::store::{Member, MemberKind, Registry, Result};
use crate::time::Timestamp;

#[async_trait]
impl Registry for PostgresStore {
    async fn put_member(&self, member: &Member) -> Result<()> {
        member.validate()?;
        let doc = member.doc.to_string();
        scoped!(self, &member.tenant, |conn| async move {
            sqlx::query(
                "INSERT INTO members (tenant, kind, id, node, doc, updated_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (tenant, kind, id) DO UPDATE SET node = excluded.node, doc = excluded.doc, \
                         updated_at = excluded.updated_at, expires_at = excluded.expires_at",
            )
            .bind(member.tenant.as_str())
            .bind(member.kind.as_str())
            .bind(&member.id)
            .bind(&member.node)
            .bind(doc)
            .bind(member.updated_at.as_millis())
            .bind(member.expires_at.as_millis())
            .execute(conn)
            .await
            .map_err(db_err)?;
            Ok(())
        })
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        scoped!(self, tenant, |conn| async move {
            let done = sqlx::query("DELETE FROM members WHERE tenant = $1 AND kind = $2 AND id = $3")
                .bind(tenant.as_str())
                .bind(kind.as_str())
                .bind(id)
                .execute(conn)
                .await
                .map_err(db_err)?;
            Ok(done.rows_affected() > 0)
        })
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        let rows = scoped!(self, tenant, |conn| async move {
            sqlx::query(
                "SELECT id, node, doc, updated_at, expires_at FROM members \
                         WHERE tenant = $1 AND kind = $2 AND expires_at > $3 ORDER BY id",
            )
            .bind(tenant.as_str())
            .bind(kind.as_str())
            .bind(now.as_millis())
            .fetch_all(conn)
            .await
            .map_err(db_err)
        })?;
        rows.iter()
            .map(|row| {
                Ok(Member {
                    tenant: tenant.clone(),
                    kind,
                    id: row.try_get(0).map_err(db_err)?,
                    node: row.try_get(1).map_err(db_err)?,
                    doc: ROWS.json(row.try_get(2).map_err(db_err)?, "doc")?,
                    updated_at: Timestamp::from_millis(row.try_get(3).map_err(db_err)?),
                    expires_at: Timestamp::from_millis(row.try_get(4).map_err(db_err)?),
                })
            })
            .collect()
    }
}
