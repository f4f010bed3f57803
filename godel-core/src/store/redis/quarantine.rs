//! Rows that do not decode, on Redis: moving task hashes out of every index
//! into the quarantine (`quarantine.lua`), and reading and deleting what is there.

use std::collections::HashMap;

use deadpool_redis::redis::Value;

use crate::ids::{TaskId, TenantId};
use crate::store::redis::decode::{array, int, task_of, text};
use crate::store::redis::scripts::call;
use crate::store::redis::{RedisStore, corrupt};
use crate::store::{Page, QuarantineQuery, Quarantined, Result, StoreError, quarantine_page};
use crate::task::Task;

/// A task hash that did not decode: its id (from the index that named it) and why.
pub(super) struct Corrupt {
    pub(super) id: String,
    pub(super) error: String,
}

/// Decodes a task hash, or says why it does not decode.
pub(super) fn decoded(tenant: &TenantId, map: &HashMap<String, String>) -> std::result::Result<Task, Corrupt> {
    task_of(tenant, map).map_err(|e| {
        let error = match e {
            StoreError::Backend { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        Corrupt { id: map.get("id").cloned().unwrap_or_default(), error }
    })
}

impl RedisStore {
    /// Moves task hashes that did not decode to the quarantine, in one
    /// script, and returns what was moved. A task that is gone already
    /// (moved or purged meanwhile) is skipped.
    pub(super) async fn quarantine(&self, tenant: &TenantId, rows: Vec<Corrupt>) -> Result<Vec<Quarantined>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = call(&self.scripts.quarantine);
        args.arg(self.tenant_key(tenant)).arg("move").arg(&self.leases).arg(tenant.as_str());
        for row in &rows {
            args.arg(&row.id).arg(&row.error);
        }
        let reply = array(self.eval(&self.scripts.quarantine, args).await?)?;
        let mut raw: HashMap<String, String> = HashMap::with_capacity(reply.len());
        for entry in reply {
            let pair = array(entry)?;
            let [id, row] = <[Value; 2]>::try_from(pair).map_err(|p| corrupt("quarantine reply", format!("{p:?}")))?;
            raw.insert(text(&id)?, text(&row)?);
        }
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let raw = raw.remove(&row.id)?;
                tracing::warn!(tenant = %tenant, task = %row.id, error = %row.error, "quarantined a task row that does not decode");
                Some(Quarantined { id: row.id, error: row.error, raw })
            })
            .collect())
    }

    pub(super) async fn quarantine_list(
        &self,
        tenant: &TenantId,
        query: &QuarantineQuery,
    ) -> Result<Page<Quarantined>> {
        let after = query.validate()?;
        let mut args = call(&self.scripts.quarantine);
        args.arg(self.tenant_key(tenant))
            .arg("list")
            .arg(after.map(|s| s.to_string()).unwrap_or_default())
            .arg(query.limit + 1);
        let reply = array(self.eval(&self.scripts.quarantine, args).await?)?;
        let rows = reply
            .into_iter()
            .map(|entry| {
                let [seq, id, error, raw] =
                    <[Value; 4]>::try_from(array(entry)?).map_err(|r| corrupt("quarantine reply", format!("{r:?}")))?;
                Ok((int(&seq)?, Quarantined { id: text(&id)?, error: text(&error)?, raw: text(&raw)? }))
            })
            .collect::<Result<_>>()?;
        Ok(quarantine_page(rows, query.limit))
    }

    pub(super) async fn quarantine_get(&self, tenant: &TenantId, id: TaskId) -> Result<Quarantined> {
        let mut args = call(&self.scripts.quarantine);
        args.arg(self.tenant_key(tenant)).arg("get").arg(id.to_string());
        let reply = array(self.eval(&self.scripts.quarantine, args).await?)?;
        let [error, raw] = <[Value; 2]>::try_from(reply).map_err(|_| StoreError::NotFound(id))?;
        Ok(Quarantined { id: id.to_string(), error: text(&error)?, raw: text(&raw)? })
    }

    pub(super) async fn quarantine_drop(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let mut args = call(&self.scripts.quarantine);
        args.arg(self.tenant_key(tenant)).arg("drop").arg(id.to_string());
        let dropped = int(&self.eval(&self.scripts.quarantine, args).await?)?;
        if dropped == 0 { Err(StoreError::NotFound(id)) } else { Ok(()) }
    }

    pub(super) async fn quarantine_purge(&self, tenant: &TenantId) -> Result<u64> {
        let mut args = call(&self.scripts.quarantine);
        args.arg(self.tenant_key(tenant)).arg("purge");
        let purged = int(&self.eval(&self.scripts.quarantine, args).await?)?;
        u64::try_from(purged).map_err(|e| corrupt("count", e))
    }
}
