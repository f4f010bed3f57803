//! Spend on Redis: a hash per tenant, one field per period.

use async_trait::async_trait;
use deadpool_redis::redis;

use crate::InvalidInput;
use crate::ids::TenantId;
use crate::money::Micros;
use crate::store::redis::{RedisStore, corrupt};
use crate::store::{Ledger, Result};

#[async_trait]
impl Ledger for RedisStore {
    async fn add_spend(&self, tenant: &TenantId, period: &str, amount: Micros) -> Result<Micros> {
        let amount = i64::try_from(amount)
            .map_err(|_| InvalidInput::new("amount", format!("expected at most {}, got {amount}", i64::MAX)))?;
        let key = format!("{}:spend", self.tenant_key(tenant));
        let total: i64 = self.query(redis::cmd("HINCRBY").arg(key).arg(period).arg(amount)).await?;
        u64::try_from(total).map_err(|e| corrupt("spend", e))
    }

    async fn spend(&self, tenant: &TenantId, period: &str) -> Result<Micros> {
        let key = format!("{}:spend", self.tenant_key(tenant));
        let total: Option<i64> = self.query(redis::cmd("HGET").arg(key).arg(period)).await?;
        u64::try_from(total.unwrap_or(0)).map_err(|e| corrupt("spend", e))
    }
}
