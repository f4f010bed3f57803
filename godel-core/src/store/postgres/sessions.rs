//! Sessions on PostgreSQL.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::postgres::PgRow;
use sqlx::{Postgres, QueryBuilder, Row};

use crate::ids::{AgentId, SessionId, TenantId};
use crate::session::Session;
use crate::store::postgres::{PostgresStore, ROWS, db_err, set_tenant};
use crate::store::sql;
use crate::store::{Result, SessionQuery, SessionStore, StoreError};
use crate::time::Timestamp;

#[async_trait]
impl SessionStore for PostgresStore {
    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        // One upsert per tenant. A session listed twice ends in its later
        // state: only its last entry is written (one statement may not
        // update a row twice). The tenant check in the conflict clause keeps a
        // session id from ever moving between tenants.
        let mut last: HashMap<SessionId, usize> = HashMap::new();
        for (i, s) in sessions.iter().enumerate() {
            last.insert(s.id, i);
        }
        let mut by_tenant: Vec<(&TenantId, Vec<&Session>)> = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            if last[&s.id] != i {
                continue;
            }
            match by_tenant.iter_mut().find(|(t, _)| *t == &s.tenant) {
                Some((_, group)) => group.push(s),
                None => by_tenant.push((&s.tenant, vec![s])),
            }
        }
        let Some((first, _)) = by_tenant.first() else { return Ok(()) };
        let mut tx = self.begin(first).await?;
        for (i, (tenant, group)) in by_tenant.iter().enumerate() {
            if i > 0 {
                set_tenant(&mut tx, tenant).await?;
            }
            let ids: Vec<String> = group.iter().map(|s| s.id.to_string()).collect();
            let agents: Vec<&str> = group.iter().map(|s| s.agent.as_str()).collect();
            let tasks: Vec<Option<String>> = group.iter().map(|s| s.task.map(|t| t.to_string())).collect();
            let states: Vec<&str> = group.iter().map(|s| s.state.as_str()).collect();
            let errors: Vec<Option<&str>> = group.iter().map(|s| s.error.as_deref()).collect();
            let created: Vec<i64> = group.iter().map(|s| s.created_at.as_millis()).collect();
            let updated: Vec<i64> = group.iter().map(|s| s.updated_at.as_millis()).collect();
            sqlx::query(
                "INSERT INTO sessions AS s (id, tenant, agent_id, task_id, state, error, created_at, updated_at) \
                 SELECT b.id::uuid, $1, b.agent_id, b.task_id::uuid, b.state, b.error, b.created_at, b.updated_at \
                 FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int8[], $8::int8[]) \
                     AS b (id, agent_id, task_id, state, error, created_at, updated_at) \
                 ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id, state = excluded.state, \
                     error = excluded.error, updated_at = excluded.updated_at \
                 WHERE s.tenant = excluded.tenant",
            )
            .bind(tenant.as_str())
            .bind(&ids)
            .bind(&agents)
            .bind(&tasks)
            .bind(&states)
            .bind(&errors)
            .bind(&created)
            .bind(&updated)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = $1 AND id = $2::uuid");
        let row = scoped!(self, tenant, |conn| async move {
            sqlx::query(&sql).bind(tenant.as_str()).bind(id.to_string()).fetch_optional(conn).await.map_err(db_err)
        })?
        .ok_or(StoreError::SessionNotFound(id))?;
        decode_session(&row)
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        query.validate()?;
        let rows = scoped!(self, tenant, |conn| async move {
            let mut qb =
                QueryBuilder::<Postgres>::new(format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = "));
            qb.push_bind(tenant.as_str());
            sql::push_session_query(&mut qb, query);
            qb.build().fetch_all(conn).await.map_err(db_err)
        })?;
        rows.iter().map(decode_session).collect()
    }

    async fn abandon_sessions(&self, tenant: &TenantId, agents: &[AgentId], why: &str, now: Timestamp) -> Result<u64> {
        if agents.is_empty() {
            return Ok(0);
        }
        let agents: Vec<&str> = agents.iter().map(AgentId::as_str).collect();
        scoped!(self, tenant, |conn| async move {
            let done = sqlx::query(
                "UPDATE sessions SET state = 'error', error = $1, updated_at = $2 \
                     WHERE tenant = $3 AND state NOT IN ('completed', 'failed', 'cancelled', 'timeout', 'error') \
                     AND agent_id = ANY($4)",
            )
            .bind(why)
            .bind(now.as_millis())
            .bind(tenant.as_str())
            .bind(&agents)
            .execute(conn)
            .await
            .map_err(db_err)?;
            Ok(done.rows_affected())
        })
    }
}

const SESSION_COLUMNS: &str = "id::text, tenant, agent_id, task_id::text, state, error, created_at, updated_at";

fn decode_session(row: &PgRow) -> Result<Session> {
    let text = |i: usize| -> Result<Option<&str>> { row.try_get::<Option<&str>, _>(i).map_err(db_err) };
    let required = |i: usize, name: &'static str| -> Result<&str> {
        text(i)?.ok_or_else(|| ROWS.corrupt(format!("{name} is NULL")))
    };
    Ok(Session {
        id: ROWS.parse(required(0, "id")?, "id")?,
        tenant: ROWS.parse(required(1, "tenant")?, "tenant")?,
        agent: ROWS.parse(required(2, "agent_id")?, "agent_id")?,
        task: text(3)?.map(|s| ROWS.parse(s, "task_id")).transpose()?,
        state: ROWS.parse(required(4, "state")?, "state")?,
        error: text(5)?.map(str::to_owned),
        created_at: Timestamp::from_millis(row.try_get(6).map_err(db_err)?),
        updated_at: Timestamp::from_millis(row.try_get(7).map_err(db_err)?),
    })
}
