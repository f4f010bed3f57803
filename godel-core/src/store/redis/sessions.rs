//! Sessions on Redis: a hash per session and a sorted set of them per tenant.

use std::collections::HashMap;

use async_trait::async_trait;
use deadpool_redis::redis;

use crate::ids::{AgentId, SessionId, TenantId};
use crate::session::Session;
use crate::store::redis::decode::{array, fields, int, session_of};
use crate::store::redis::scripts::call;
use crate::store::redis::{RedisStore, corrupt};
use crate::store::{Result, SessionQuery, SessionStore, StoreError};
use crate::time::Timestamp;

#[async_trait]
impl SessionStore for RedisStore {
    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for s in sessions {
            let base = self.tenant_key(&s.tenant);
            let key = format!("{base}:s:{}", s.id);
            pipe.hset_multiple(
                &key,
                &[
                    ("id", s.id.to_string()),
                    ("ag", s.agent.to_string()),
                    ("st", s.state.as_str().to_owned()),
                    ("cr", s.created_at.as_millis().to_string()),
                    ("up", s.updated_at.as_millis().to_string()),
                ],
            )
            .ignore();
            match s.task {
                Some(task) => pipe.hset(&key, "task", task.to_string()).ignore(),
                None => pipe.hdel(&key, "task").ignore(),
            };
            match &s.error {
                Some(err) => pipe.hset(&key, "err", err).ignore(),
                None => pipe.hdel(&key, "err").ignore(),
            };
            pipe.zadd(format!("{base}:ss"), s.id.to_string(), s.created_at.as_millis()).ignore();
        }
        self.query_pipe::<()>(&pipe).await
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        let key = format!("{}:s:{id}", self.tenant_key(tenant));
        let map: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(key)).await?;
        if map.is_empty() {
            return Err(StoreError::SessionNotFound(id));
        }
        session_of(tenant, &map)
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        query.validate()?;
        let mut args = call(&self.scripts.sessions);
        args.arg(self.tenant_key(tenant)).arg("all");
        let reply = array(self.eval(&self.scripts.sessions, args).await?)?;
        let mut sessions = Vec::new();
        for entry in reply {
            let session = session_of(tenant, &fields(entry)?)?;
            if query.matches(&session) {
                sessions.push(session);
            }
        }
        sessions.sort_by_key(|s| std::cmp::Reverse((s.created_at, s.id)));
        sessions.truncate(query.limit);
        Ok(sessions)
    }

    async fn abandon_sessions(&self, tenant: &TenantId, agents: &[AgentId], why: &str, now: Timestamp) -> Result<u64> {
        if agents.is_empty() {
            return Ok(0);
        }
        let mut args = call(&self.scripts.sessions);
        args.arg(self.tenant_key(tenant)).arg("abandon").arg(now.as_millis()).arg(why);
        for agent in agents {
            args.arg(agent.as_str());
        }
        let n = int(&self.eval(&self.scripts.sessions, args).await?)?;
        u64::try_from(n).map_err(|e| corrupt("count", e))
    }
}
