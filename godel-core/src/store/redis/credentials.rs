//! API keys and the audit log on redis.

use async_trait::async_trait;

use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash};
use crate::ids::{KeyId, TenantId};
use crate::store::redis::RedisStore;
use crate::store::{Credentials, Page, Result, StoreError};
use crate::time::Timestamp;

fn unsupported() -> StoreError {
    StoreError::Backend { backend: "redis", source: "credentials are not stored on this backend yet".into() }
}

#[async_trait]
impl Credentials for RedisStore {
    async fn create_key(&self, _key: &ApiKey) -> Result<()> {
        Err(unsupported())
    }

    async fn key_by_hash(&self, _hash: &KeyHash) -> Result<Option<ApiKey>> {
        Err(unsupported())
    }

    async fn get_key(&self, _id: &KeyId) -> Result<ApiKey> {
        Err(unsupported())
    }

    async fn list_keys(&self, _tenant: Option<&TenantId>) -> Result<Vec<ApiKey>> {
        Err(unsupported())
    }

    async fn revoke_key(&self, _id: &KeyId, _now: Timestamp) -> Result<ApiKey> {
        Err(unsupported())
    }

    async fn expire_key(&self, _id: &KeyId, _at: Timestamp) -> Result<ApiKey> {
        Err(unsupported())
    }

    async fn touch_keys(&self, _used: &[(KeyId, Timestamp)]) -> Result<()> {
        Err(unsupported())
    }

    async fn has_keys(&self) -> Result<bool> {
        Err(unsupported())
    }

    async fn append_audit(&self, _entries: &[AuditEntry]) -> Result<()> {
        Err(unsupported())
    }

    async fn list_audit(&self, _query: &AuditQuery) -> Result<Page<AuditEntry>> {
        Err(unsupported())
    }

    async fn prune_audit(&self, _before: Timestamp, _limit: usize) -> Result<u64> {
        Err(unsupported())
    }
}
