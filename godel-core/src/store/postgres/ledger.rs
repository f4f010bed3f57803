//! Spend on PostgreSQL.

use async_trait::async_trait;

use crate::InvalidInput;
use crate::ids::TenantId;
use crate::money::Micros;
use crate::store::postgres::{PostgresStore, db_err};
use crate::store::{Ledger, Result};

#[async_trait]
impl Ledger for PostgresStore {
    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        let amount = i64::try_from(amount).map_err(|_| InvalidInput::new("amount", "too large"))?;
        let total: i64 = scoped!(self, tenant, |conn| async move {
            sqlx::query_scalar(
                "INSERT INTO spend AS s (tenant, period, micros) VALUES ($1, $2, $3) \
                         ON CONFLICT (tenant, period) DO UPDATE SET micros = \
                             CASE WHEN s.micros > 9223372036854775807 - excluded.micros THEN 9223372036854775807 \
                                  ELSE s.micros + excluded.micros END \
                         RETURNING micros",
            )
            .bind(tenant.as_str())
            .bind(period)
            .bind(amount)
            .fetch_one(conn)
            .await
            .map_err(db_err)
        })?;
        Ok(total.unsigned_abs())
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        let total: Option<i64> = scoped!(self, tenant, |conn| async move {
            sqlx::query_scalar("SELECT micros FROM spend WHERE tenant = $1 AND period = $2")
                .bind(tenant.as_str())
                .bind(period)
                .fetch_optional(conn)
                .await
                .map_err(db_err)
        })?;
        Ok(total.unwrap_or(0).unsigned_abs())
    }
}
