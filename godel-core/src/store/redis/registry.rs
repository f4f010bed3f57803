//! The registry on Redis: a hash per tenant and kind, one JSON row per member.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_redis::redis;
use serde_json::Value as Json;

use crate::ids::TenantId;
use crate::store::redis::{RedisStore, corrupt};
use crate::store::{Member, MemberKind, Registry, Result};
use crate::time::Timestamp;

#[async_trait]
impl Registry for RedisStore {
    async fn put_member(&self, member: &Member) -> Result<()> {
        member.validate()?;
        let key = format!("{}:m:{}", self.tenant_key(&member.tenant), member.kind.as_str());
        let row = serde_json::json!({
            "node": member.node,
            "doc": member.doc,
            "updated_at": member.updated_at.as_millis(),
            "expires_at": member.expires_at.as_millis(),
        });
        let _: i64 = self.query(redis::cmd("HSET").arg(key).arg(&member.id).arg(row.to_string())).await?;
        Ok(())
    }

    async fn remove_member(&self, tenant: &TenantId, kind: MemberKind, id: &str) -> Result<bool> {
        let key = format!("{}:m:{}", self.tenant_key(tenant), kind.as_str());
        let removed: i64 = self.query(redis::cmd("HDEL").arg(key).arg(id)).await?;
        Ok(removed > 0)
    }

    async fn members(&self, tenant: &TenantId, kind: MemberKind, now: Timestamp) -> Result<Vec<Member>> {
        #[derive(serde::Deserialize)]
        struct Row {
            node: String,
            doc: Json,
            updated_at: i64,
            expires_at: i64,
        }
        let key = format!("{}:m:{}", self.tenant_key(tenant), kind.as_str());
        let rows: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(key)).await?;
        let mut members = Vec::new();
        for (id, row) in rows {
            let row: Row = serde_json::from_str(&row).map_err(|e| corrupt("member", e))?;
            if row.expires_at > now.as_millis() {
                members.push(Member {
                    tenant: tenant.clone(),
                    kind,
                    id,
                    node: row.node,
                    doc: row.doc,
                    updated_at: Timestamp::from_millis(row.updated_at),
                    expires_at: Timestamp::from_millis(row.expires_at),
                });
            }
        }
        members.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(members)
    }
}
