//! Reading the store's replies: Redis values, task and session hashes, and
//! the short answers of the scripts.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_redis::redis::{self, Value};
use serde_json::Value as Json;

use crate::ids::{AgentId, TaskId, TenantId};
use crate::session::{Session, SessionState};
use crate::store::redis::corrupt;
use crate::store::{Result, StoreError, TaskFilter};
use crate::task::{Priority, Task, TaskError, TaskPayload, TaskStatus};
use crate::time::Timestamp;

pub(super) fn text(v: &Value) -> Result<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|e| corrupt("reply", e)),
        Value::SimpleString(s) => Ok(s.clone()),
        Value::Okay => Ok("OK".to_owned()),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(corrupt("reply", format!("{other:?}"))),
    }
}

pub(super) fn int(v: &Value) -> Result<i64> {
    match v {
        Value::Int(n) => Ok(*n),
        other => text(other)?.parse().map_err(|e| corrupt("number", e)),
    }
}

pub(super) fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        other => Err(corrupt("reply", format!("expected an array, got {other:?}"))),
    }
}

/// A flat field/value list (or a RESP3 map) as a map.
pub(super) fn fields(v: Value) -> Result<HashMap<String, String>> {
    match v {
        Value::Map(pairs) => pairs.iter().map(|(k, v)| Ok((text(k)?, text(v)?))).collect(),
        other => {
            let items = array(other)?;
            items.chunks(2).map(|pair| Ok((text(&pair[0])?, text(pair.get(1).unwrap_or(&Value::Nil))?))).collect()
        }
    }
}

/// The fields `read_task` in `lib.lua` returns, in order.
pub(super) const TASK_FIELDS: [&str; 23] = [
    "id", "pri", "st", "pay", "caps", "aff", "idem", "par", "att", "max", "to", "run", "ag", "exp", "cxl", "res",
    "err", "cr", "up", "sa", "ca", "dl", "tok",
];

/// A `read_task` row as a map of the fields present.
pub(super) fn row_fields(v: Value) -> Result<HashMap<String, String>> {
    let row = array(v)?;
    if row.len() != TASK_FIELDS.len() {
        return Err(corrupt("task row", format!("{} fields, expected {}", row.len(), TASK_FIELDS.len())));
    }
    let mut map = HashMap::with_capacity(row.len());
    for (name, value) in TASK_FIELDS.iter().zip(&row) {
        if *value != Value::Nil {
            map.insert((*name).to_owned(), text(value)?);
        }
    }
    Ok(map)
}

pub(super) struct Fields<'a>(pub(super) &'a HashMap<String, String>);

impl Fields<'_> {
    /// An optional field: absent or empty means none (see `lib.lua`).
    pub(super) fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    pub(super) fn req(&self, name: &str) -> Result<&str> {
        self.opt(name).ok_or_else(|| corrupt("record", format!("field {name} missing")))
    }

    pub(super) fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.req(name)?.parse().map_err(|e| corrupt("record", format!("field {name}: {e}")))
    }

    pub(super) fn parse_opt<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        self.opt(name).map(|v| v.parse().map_err(|e| corrupt("record", format!("field {name}: {e}")))).transpose()
    }

    pub(super) fn time(&self, name: &str) -> Result<Timestamp> {
        Ok(Timestamp::from_millis(self.parse(name)?))
    }

    pub(super) fn time_opt(&self, name: &str) -> Result<Option<Timestamp>> {
        Ok(self.parse_opt::<i64>(name)?.map(Timestamp::from_millis))
    }

    pub(super) fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.opt(name)
            .map(|v| serde_json::from_str(v).map_err(|e| corrupt("record", format!("field {name}: {e}"))))
            .transpose()
    }
}

pub(super) fn task_of(tenant: &TenantId, map: &HashMap<String, String>) -> Result<Task> {
    let f = Fields(map);
    let rank: u8 = f.parse("pri")?;
    Ok(Task {
        id: f.parse("id")?,
        tenant: tenant.clone(),
        priority: Priority::from_rank(rank).ok_or_else(|| corrupt("record", format!("priority rank {rank}")))?,
        status: f.parse("st")?,
        payload: f.json::<TaskPayload>("pay")?.ok_or_else(|| corrupt("record", "field pay missing"))?,
        capabilities: f.opt("caps").map(|c| c.split_whitespace().map(str::to_owned).collect()).unwrap_or_default(),
        affinity_key: f.opt("aff").map(str::to_owned),
        idempotency_key: f.opt("idem").map(str::to_owned),
        parent: f.parse_opt("par")?,
        attempt: f.parse("att")?,
        max_attempts: f.parse("max")?,
        timeout: f.parse_opt::<u64>("to")?.map(Duration::from_nanos),
        run_at: f.time("run")?,
        agent: f.parse_opt("ag")?,
        lease_expires_at: f.time_opt("exp")?,
        cancel_requested: f.opt("cxl") == Some("1"),
        result: f.json::<Json>("res")?,
        error: f.json::<TaskError>("err")?,
        created_at: f.time("cr")?,
        updated_at: f.time("up")?,
        started_at: f.time_opt("sa")?,
        completed_at: f.time_opt("ca")?,
        dead_lettered_at: f.time_opt("dl")?,
    })
}

pub(super) fn session_of(tenant: &TenantId, map: &HashMap<String, String>) -> Result<Session> {
    let f = Fields(map);
    Ok(Session {
        id: f.parse("id")?,
        tenant: tenant.clone(),
        agent: f.parse("ag")?,
        task: f.parse_opt("task")?,
        state: f.parse::<SessionState>("st")?,
        created_at: f.time("cr")?,
        updated_at: f.time("up")?,
        // Read as stored: a session's reason may be empty (sessions are never emptied in place).
        error: map.get("err").cloned(),
    })
}

/// The six filter arguments the scripts' `parse_filter` reads.
pub(super) fn filter_args(args: &mut redis::Cmd, filter: &TaskFilter) {
    let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
    let priorities: Vec<String> = filter.priorities.iter().map(|p| p.rank().to_string()).collect();
    args.arg(statuses.join(","))
        .arg(priorities.join(","))
        .arg(filter.agent.as_ref().map(AgentId::as_str).unwrap_or(""))
        .arg(filter.parent.map(|p| p.to_string()).unwrap_or_default())
        .arg(filter.created_after.map(|t| t.as_millis().to_string()).unwrap_or_default())
        .arg(filter.created_before.map(|t| t.as_millis().to_string()).unwrap_or_default());
}

/// A script's answer about one task by id: `n` (missing), `t:<status>` (wrong status) or something else.
pub(super) fn task_answer(reply: &Value, id: TaskId, action: &'static str) -> Result<()> {
    if let Ok(s) = text(reply) {
        if s == "n" {
            return Err(StoreError::NotFound(id));
        }
        if let Some(status) = s.strip_prefix("t:") {
            let from = status.parse().map_err(|e| corrupt("status", e))?;
            return Err(StoreError::InvalidTransition { task: id, from, action });
        }
    }
    Ok(())
}

pub(super) fn status_of(s: &str) -> Result<TaskStatus> {
    s.parse().map_err(|e| corrupt("status", e))
}
