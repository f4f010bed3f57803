//! API keys and the audit log on Redis, outside every tenant's keys (see
//! `keys.lua` and `audit.lua`): `<prefix>:keys` maps each key's hash to its
//! id and `<prefix>:keys:<id>` holds the key; `<prefix>:audit` holds the
//! entries by sequence number, `<prefix>:audit-at` their times and
//! `<prefix>:audit-seq` the last number handed out.

use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};
use serde::{Deserialize, Serialize};

use crate::credential::{ApiKey, AuditEntry, AuditQuery, KeyHash};
use crate::ids::{KeyId, TenantId};
use crate::store::redis::decode::{array, int, text};
use crate::store::redis::scripts::call;
use crate::store::redis::{RedisStore, backend_err, corrupt};
use crate::store::{Credentials, Page, Result, StoreError};
use crate::time::Timestamp;

/// How many audit entries a listing reads per round trip while it filters.
const AUDIT_CHUNK: usize = 500;

/// An audit entry as stored, after its sequence number and a `|`.
#[derive(Serialize, Deserialize)]
struct AuditDoc {
    at: i64,
    credential: Option<String>,
    tenant: String,
    role: Option<String>,
    action: String,
    target: Option<String>,
    outcome: String,
    status: u16,
    request_id: String,
    source: String,
}

impl RedisStore {
    fn keys_key(&self) -> String {
        format!("{}:keys", self.prefix)
    }

    fn audit_key(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    /// Runs `keys.lua` in `mode` with `args`.
    async fn keys_script(&self, mode: &str, args: &[String]) -> Result<Value> {
        let mut cmd = call(&self.scripts.keys);
        cmd.arg(self.keys_key()).arg(mode).arg(args);
        self.eval(&self.scripts.keys, cmd).await
    }

    /// A key `keys.lua` returned, or `None` for its `n`.
    async fn key_reply(&self, mode: &str, args: &[String]) -> Result<Option<ApiKey>> {
        match self.keys_script(mode, args).await? {
            Value::Array(fields) => key_of(&fields).map(Some),
            reply if text(&reply)? == "n" => Ok(None),
            reply => Err(corrupt("keys reply", format!("{reply:?}"))),
        }
    }
}

fn millis(t: Option<Timestamp>) -> String {
    t.map(|t| t.as_millis().to_string()).unwrap_or_default()
}

/// A key from its fields in `keys.lua`'s order (absent ones as nil).
fn key_of(fields: &[Value]) -> Result<ApiKey> {
    let [id, hash, name, tenant, role, prefix, created, expires, used, revoked] = fields else {
        return Err(corrupt("key", format!("{} fields", fields.len())));
    };
    let opt = |v: &Value| -> Result<Option<String>> { if *v == Value::Nil { Ok(None) } else { text(v).map(Some) } };
    let time = |v: &Value| -> Result<Option<Timestamp>> {
        opt(v)?.map(|s| s.parse().map(Timestamp::from_millis).map_err(|e| corrupt("key time", e))).transpose()
    };
    let parse =
        |v: &Value, what: &str| -> Result<String> { opt(v)?.ok_or_else(|| corrupt("key", format!("no {what}"))) };
    Ok(ApiKey {
        id: parse(id, "id")?.parse().map_err(|e| corrupt("key id", e))?,
        name: parse(name, "name")?,
        tenant: parse(tenant, "tenant")?.parse().map_err(|e| corrupt("key tenant", e))?,
        role: parse(role, "role")?.parse().map_err(|e| corrupt("key role", e))?,
        hash: KeyHash::from_hex(&parse(hash, "hash")?).map_err(|e| corrupt("key hash", e))?,
        prefix: parse(prefix, "prefix")?,
        created_at: time(created)?.ok_or_else(|| corrupt("key", "no creation time"))?,
        expires_at: time(expires)?,
        last_used_at: time(used)?,
        revoked_at: time(revoked)?,
    })
}

/// An audit entry from its sorted-set member, `<seq>|<JSON>`.
fn entry_of(member: &str) -> Result<AuditEntry> {
    let (seq, doc) = member.split_once('|').ok_or_else(|| corrupt("audit entry", member))?;
    let doc: AuditDoc = serde_json::from_str(doc).map_err(|e| corrupt("audit entry", e))?;
    Ok(AuditEntry {
        seq: seq.parse().map_err(|e| corrupt("audit seq", e))?,
        at: Timestamp::from_millis(doc.at),
        credential: doc.credential,
        tenant: doc.tenant.parse().map_err(|e| corrupt("audit tenant", e))?,
        role: doc.role.map(|r| r.parse()).transpose().map_err(|e| corrupt("audit role", e))?,
        action: doc.action,
        target: doc.target,
        outcome: doc.outcome.parse().map_err(|e| corrupt("audit outcome", e))?,
        status: doc.status,
        request_id: doc.request_id,
        source: doc.source,
    })
}

#[async_trait]
impl Credentials for RedisStore {
    async fn create_key(&self, key: &ApiKey) -> Result<()> {
        let args = [
            key.id.to_string(),
            key.hash.to_hex(),
            key.name.clone(),
            key.tenant.to_string(),
            key.role.to_string(),
            key.prefix.clone(),
            key.created_at.as_millis().to_string(),
            millis(key.expires_at),
            millis(key.last_used_at),
            millis(key.revoked_at),
        ];
        match text(&self.keys_script("create", &args).await?)?.as_str() {
            "ok" => Ok(()),
            "c" => Err(StoreError::Conflict(format!("key {}", key.id))),
            other => Err(corrupt("create reply", other)),
        }
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> Result<Option<ApiKey>> {
        self.key_reply("find", &["hash".into(), hash.to_hex()]).await
    }

    async fn get_key(&self, id: &KeyId) -> Result<ApiKey> {
        self.key_reply("find", &["id".into(), id.to_string()]).await?.ok_or(StoreError::KeyNotFound(*id))
    }

    async fn list_keys(&self, tenant: Option<&TenantId>) -> Result<Vec<ApiKey>> {
        let reply = self.keys_script("list", &[tenant.map(TenantId::to_string).unwrap_or_default()]).await?;
        let mut keys = array(reply)?.into_iter().map(|k| key_of(&array(k)?)).collect::<Result<Vec<_>>>()?;
        keys.sort_by_key(|k| std::cmp::Reverse((k.created_at, k.id)));
        Ok(keys)
    }

    async fn revoke_key(&self, id: &KeyId, now: Timestamp) -> Result<ApiKey> {
        let args = [id.to_string(), now.as_millis().to_string()];
        self.key_reply("revoke", &args).await?.ok_or(StoreError::KeyNotFound(*id))
    }

    async fn expire_key(&self, id: &KeyId, at: Timestamp) -> Result<ApiKey> {
        let args = [id.to_string(), at.as_millis().to_string()];
        self.key_reply("expire", &args).await?.ok_or(StoreError::KeyNotFound(*id))
    }

    async fn touch_keys(&self, used: &[(KeyId, Timestamp)]) -> Result<()> {
        if used.is_empty() {
            return Ok(());
        }
        let mut args = vec![used.len().to_string()];
        for (id, at) in used {
            args.push(id.to_string());
            args.push(at.as_millis().to_string());
        }
        self.keys_script("touch", &args).await?;
        Ok(())
    }

    async fn has_keys(&self) -> Result<bool> {
        let n: i64 = self.query(redis::cmd("HLEN").arg(self.keys_key())).await?;
        Ok(n > 0)
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut cmd = call(&self.scripts.audit);
        cmd.arg(self.audit_key()).arg("append").arg(entries.len());
        for e in entries {
            let doc = AuditDoc {
                at: e.at.as_millis(),
                credential: e.credential.clone(),
                tenant: e.tenant.to_string(),
                role: e.role.map(|r| r.to_string()),
                action: e.action.clone(),
                target: e.target.clone(),
                outcome: e.outcome.as_str().to_owned(),
                status: e.status,
                request_id: e.request_id.clone(),
                source: e.source.clone(),
            };
            cmd.arg(e.at.as_millis()).arg(serde_json::to_string(&doc).map_err(backend_err)?);
        }
        self.eval(&self.scripts.audit, cmd).await?;
        Ok(())
    }

    async fn list_audit(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        let mut below = crate::store::audit_start(query)?.map_or_else(|| "+inf".to_owned(), |s| format!("({s}"));
        let mut rows = Vec::new();
        // Newest first, a chunk at a time, until the page (and one more) is full.
        while rows.len() <= query.limit {
            let members: Vec<String> = self
                .query(
                    redis::cmd("ZRANGE")
                        .arg(self.audit_key())
                        .arg(&below)
                        .arg("-inf")
                        .arg("BYSCORE")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(AUDIT_CHUNK),
                )
                .await?;
            for member in &members {
                let entry = entry_of(member)?;
                below = format!("({}", entry.seq);
                if query.matches(&entry) && rows.len() <= query.limit {
                    rows.push(entry);
                }
            }
            if members.len() < AUDIT_CHUNK {
                break;
            }
        }
        Ok(crate::store::audit_page(rows, query.limit))
    }

    async fn prune_audit(&self, before: Timestamp, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        let mut cmd = call(&self.scripts.audit);
        cmd.arg(self.audit_key()).arg("prune").arg(before.as_millis()).arg(limit);
        let n = int(&self.eval(&self.scripts.audit, cmd).await?)?;
        u64::try_from(n).map_err(|e| corrupt("count", e))
    }
}
