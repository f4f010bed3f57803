//! Sessions on SQLite.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Connection, QueryBuilder, Row, Sqlite};

use crate::ids::{AgentId, SessionId, TenantId};
use crate::session::Session;
use crate::store::sql;
use crate::store::sqlite::{BATCH_CHUNK, ROWS, SqliteStore, backend_err, db_err};
use crate::store::{Result, SessionQuery, SessionStore, StoreError};
use crate::time::Timestamp;

#[async_trait]
impl SessionStore for SqliteStore {
    async fn save_sessions(&self, sessions: &[Session]) -> Result<()> {
        if sessions.is_empty() {
            return Ok(());
        }
        // One upsert per chunk, rows taken in input order, so a session listed
        // twice ends in its later state. The tenant check in the conflict
        // clause keeps a session id from ever moving between tenants.
        let sql = "INSERT INTO sessions (id, tenant, agent_id, task_id, state, error, created_at, updated_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, \
                 value ->> 7 \
             FROM json_each(?1) WHERE true ORDER BY key \
             ON CONFLICT (id) DO UPDATE SET task_id = excluded.task_id, state = excluded.state, \
                 error = excluded.error, updated_at = excluded.updated_at \
             WHERE sessions.tenant = excluded.tenant";
        let batches = sessions
            .chunks(BATCH_CHUNK)
            .map(|chunk| {
                let rows: Vec<_> = chunk
                    .iter()
                    .map(|s| {
                        (
                            s.id.to_string(),
                            s.tenant.as_str(),
                            s.agent.as_str(),
                            s.task.map(|t| t.to_string()),
                            s.state.as_str(),
                            s.error.as_deref(),
                            s.created_at.as_millis(),
                            s.updated_at.as_millis(),
                        )
                    })
                    .collect();
                serde_json::to_string(&rows).map_err(backend_err)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut conn = self.writer().await?;
        if let [batch] = batches.as_slice() {
            sqlx::query(sql).bind(batch).execute(&mut *conn).await.map_err(db_err)?;
            return Ok(());
        }
        let mut tx = conn.begin().await.map_err(db_err)?;
        for batch in &batches {
            sqlx::query(sql).bind(batch).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    async fn get_session(&self, tenant: &TenantId, id: SessionId) -> Result<Session> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = ? AND id = ?");
        let row = sqlx::query(&sql)
            .bind(tenant.as_str())
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db_err)?
            .ok_or(StoreError::SessionNotFound(id))?;
        decode_session(&row)
    }

    async fn list_sessions(&self, tenant: &TenantId, query: &SessionQuery) -> Result<Vec<Session>> {
        query.validate()?;
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant = "));
        qb.push_bind(tenant.as_str());
        sql::push_session_query(&mut qb, query);
        let rows = qb.build().fetch_all(&self.reader).await.map_err(db_err)?;
        rows.iter().map(decode_session).collect()
    }

    async fn abandon_sessions(&self, tenant: &TenantId, agents: &[AgentId], why: &str, now: Timestamp) -> Result<u64> {
        if agents.is_empty() {
            return Ok(0);
        }
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE sessions SET state = 'error', error = ");
        qb.push_bind(why.to_owned()).push(", updated_at = ").push_bind(now.as_millis());
        qb.push(" WHERE tenant = ").push_bind(tenant.as_str());
        qb.push(" AND state NOT IN ('completed', 'failed', 'cancelled', 'timeout', 'error') AND agent_id IN (");
        let mut list = qb.separated(", ");
        for agent in agents {
            list.push_bind(agent.as_str().to_owned());
        }
        qb.push(")");
        let done = qb.build().execute(&mut *self.writer().await?).await.map_err(db_err)?;
        Ok(done.rows_affected())
    }
}

const SESSION_COLUMNS: &str = "id, tenant, agent_id, task_id, state, error, created_at, updated_at";

fn decode_session(row: &SqliteRow) -> Result<Session> {
    let text = |i: usize| -> Result<Option<String>> { row.try_get::<Option<String>, _>(i).map_err(db_err) };
    let required = |i: usize, name: &'static str| -> Result<String> {
        text(i)?.ok_or_else(|| ROWS.corrupt(format!("{name} is NULL")))
    };
    Ok(Session {
        id: ROWS.parse(&required(0, "id")?, "id")?,
        tenant: ROWS.parse(&required(1, "tenant")?, "tenant")?,
        agent: ROWS.parse(&required(2, "agent_id")?, "agent_id")?,
        task: text(3)?.map(|s| ROWS.parse(&s, "task_id")).transpose()?,
        state: ROWS.parse(&required(4, "state")?, "state")?,
        error: text(5)?,
        created_at: Timestamp::from_millis(row.try_get(6).map_err(db_err)?),
        updated_at: Timestamp::from_millis(row.try_get(7).map_err(db_err)?),
    })
}
