//! Spend on SQLite.

use async_trait::async_trait;

use crate::InvalidInput;
use crate::ids::TenantId;
use crate::money::Micros;
use crate::store::sqlite::{SqliteStore, db_err};
use crate::store::{Ledger, Result};

#[async_trait]
impl Ledger for SqliteStore {
    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        let amount = i64::try_from(amount).map_err(|_| InvalidInput::new("amount", "too large"))?;
        let total: i64 = sqlx::query_scalar(
            "INSERT INTO spend (tenant, period, micros) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tenant, period) DO UPDATE SET micros = min(micros + ?3, 9223372036854775807) \
             RETURNING micros",
        )
        .bind(tenant.as_str())
        .bind(period)
        .bind(amount)
        .fetch_one(&mut *self.writer().await?)
        .await
        .map_err(db_err)?;
        Ok(total.unsigned_abs())
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        let total: Option<i64> = sqlx::query_scalar("SELECT micros FROM spend WHERE tenant = ? AND period = ?")
            .bind(tenant.as_str())
            .bind(period)
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?;
        Ok(total.unwrap_or(0).unsigned_abs())
    }
}
