//! The queue on Redis: one Lua script per state change (see the module
//! documentation of `store::redis` for the keys).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_redis::redis::{self, Value};
use serde_json::Value as Json;

use crate::ids::{AgentId, LeaseToken, TaskId, TenantId};
use crate::output::{OutputChunk, OutputStream};
use crate::store::redis::decode::{
    Fields, array, fields, filter_args, int, row_fields, status_of, task_answer, task_of, text,
};
use crate::store::redis::quarantine::{Corrupt, decoded};
use crate::store::redis::scripts::call;
use crate::store::redis::{LIST_BUDGET, PURGE_CHUNK, RedisStore, backend_err, corrupt};
use crate::store::{
    BatchCompletion, CancelOutcome, Claim, ClaimRequest, Claimed, Completion, Cursor, Enqueued, FailOutcome, Failure,
    HistoryEntry, Lease, LeaseStatus, LeaseWrite, OutputRecord, Page, QuarantineQuery, Quarantined, QueueCounts,
    QueueDepth, Reclaimed, Result, Retry, SortOrder, StoreError, TaskFilter, TaskQuery, TaskStore, WriteOutcome,
};
use crate::task::{NewTask, Priority, Task, TaskStatus};
use crate::time::Timestamp;

#[async_trait]
impl TaskStore for RedisStore {
    async fn enqueue_batch(&self, tenant: &TenantId, tasks: Vec<NewTask>, now: Timestamp) -> Result<Vec<Enqueued>> {
        self.insert(tenant, tasks, now).await
    }

    async fn claim_or_quarantine(&self, request: &ClaimRequest, now: Timestamp) -> Result<Claimed> {
        if request.limit == 0 {
            return Ok(Claimed::default());
        }
        // Each lease's token is this random UUID with its last 8 hex digits
        // replaced by the claim's index in the batch: 96 random bits, unique per call.
        let base = LeaseToken::random().to_string();
        let mut args = call(&self.scripts.claim);
        args.arg(self.tenant_key(&request.tenant))
            .arg(&self.leases)
            .arg(request.tenant.as_str())
            .arg(now.as_millis())
            .arg((now + request.lease_for).as_millis())
            .arg(request.agent.as_str())
            .arg(request.limit.min(i64::MAX as usize))
            .arg(&base[..28]);
        for cap in &request.capabilities {
            args.arg(cap);
        }
        let reply = array(self.eval(&self.scripts.claim, args).await?)?;
        // Each row decodes on its own. One that does not is quarantined by a
        // second script right after the claim (Lua cannot tell what decodes);
        // if that script never runs, the lease lapses and a later claim
        // quarantines the row.
        let mut claimed = Claimed::default();
        let mut bad = Vec::new();
        for entry in reply {
            let map = row_fields(entry)?;
            match decoded(&request.tenant, &map) {
                Ok(task) => {
                    let token = Fields(&map).parse::<LeaseToken>("tok")?;
                    let lease = Lease { tenant: request.tenant.clone(), task: task.id, attempt: task.attempt, token };
                    claimed.claims.push(Claim { lease, task });
                }
                Err(c) => bad.push(c),
            }
        }
        claimed.quarantined = self.quarantine(&request.tenant, bad).await?;
        Ok(claimed)
    }

    async fn start(&self, lease: &Lease, agent: &AgentId, now: Timestamp) -> Result<LeaseStatus> {
        let out = self.write(&[('s', lease, agent.as_str().to_owned())], now).await?;
        match out.first().map(String::as_str) {
            Some("l") => Err(StoreError::LeaseLost(lease.task)),
            Some(s) => {
                let (cancel, expires) = s[1..].split_once(':').ok_or_else(|| corrupt("start reply", s))?;
                let expires = expires.parse().map_err(|e| corrupt("start reply", e))?;
                Ok(LeaseStatus { expires_at: Timestamp::from_millis(expires), cancel_requested: cancel == "1" })
            }
            None => Err(corrupt("start reply", "empty")),
        }
    }

    async fn write_batch(&self, writes: &[LeaseWrite], now: Timestamp) -> Result<Vec<WriteOutcome>> {
        let entries = writes
            .iter()
            .map(|w| match w {
                LeaseWrite::Start { lease, agent } => Ok(('s', lease, agent.as_str().to_owned())),
                LeaseWrite::Complete(c) => Ok(('c', &c.lease, serde_json::to_string(&c.result).map_err(backend_err)?)),
            })
            .collect::<Result<Vec<_>>>()?;
        let out = self.write(&entries, now).await?;
        out.iter()
            .map(|s| match s.as_bytes().first() {
                Some(b'l') => Ok(WriteOutcome::LeaseLost),
                Some(b'c') => Ok(WriteOutcome::Completed),
                Some(b's') => Ok(WriteOutcome::Started { cancel_requested: s.as_bytes().get(1) == Some(&b'1') }),
                _ => Err(corrupt("write outcome", s)),
            })
            .collect()
    }

    async fn heartbeat(&self, lease: &Lease, extend_by: Duration, now: Timestamp) -> Result<LeaseStatus> {
        let expires_at = now + extend_by;
        let reply = self.lease_script(&self.scripts.heartbeat, lease, &[expires_at.as_millis().to_string()]).await?;
        Ok(LeaseStatus { expires_at, cancel_requested: text(&reply)? == "1" })
    }

    async fn append_output(&self, lease: &Lease, chunks: &[OutputChunk], now: Timestamp) -> Result<()> {
        let mut extra = Vec::with_capacity(1 + 2 * chunks.len());
        extra.push(now.as_millis().to_string());
        for chunk in chunks {
            extra.push(chunk.stream.as_str().to_owned());
            extra.push(chunk.data.clone());
        }
        self.lease_script(&self.scripts.output, lease, &extra).await?;
        Ok(())
    }

    async fn complete(&self, lease: &Lease, result: Json, now: Timestamp) -> Result<()> {
        let result = serde_json::to_string(&result).map_err(backend_err)?;
        match self.write(&[('c', lease, result)], now).await?.first().map(String::as_str) {
            Some("c") => Ok(()),
            _ => Err(StoreError::LeaseLost(lease.task)),
        }
    }

    async fn complete_batch(&self, completions: &[Completion], now: Timestamp) -> Result<BatchCompletion> {
        let entries = completions
            .iter()
            .map(|c| Ok(('c', &c.lease, serde_json::to_string(&c.result).map_err(backend_err)?)))
            .collect::<Result<Vec<_>>>()?;
        let out = self.write(&entries, now).await?;
        let mut done = BatchCompletion::default();
        for (c, outcome) in completions.iter().zip(out) {
            if outcome == "c" {
                done.completed.push(c.lease.task);
            } else {
                done.lease_lost.push(c.lease.task);
            }
        }
        Ok(done)
    }

    async fn fail(&self, lease: &Lease, failure: &Failure, now: Timestamp) -> Result<FailOutcome> {
        let (retryable, run_at) = match failure.retry {
            Retry::After(delay) => ("1", now + delay),
            Retry::Never => ("0", now),
        };
        let extra = [
            now.as_millis().to_string(),
            serde_json::to_string(&failure.error).map_err(backend_err)?,
            retryable.to_owned(),
            run_at.as_millis().to_string(),
            self.channel.clone(),
            self.wake(&lease.tenant)?,
        ];
        let reply = self.lease_script(&self.scripts.fail, lease, &extra).await?;
        Ok(match status_of(&text(&reply)?)? {
            TaskStatus::Pending => FailOutcome::Retrying { run_at },
            TaskStatus::DeadLetter => FailOutcome::DeadLettered,
            TaskStatus::Failed => FailOutcome::Failed,
            _ => FailOutcome::Cancelled,
        })
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<TaskStatus> {
        let extra = [now.as_millis().to_string(), self.channel.clone(), self.wake(&lease.tenant)?];
        let reply = self.lease_script(&self.scripts.release, lease, &extra).await?;
        status_of(&text(&reply)?)
    }

    async fn confirm_cancel(&self, lease: &Lease, now: Timestamp) -> Result<()> {
        self.lease_script(&self.scripts.confirm_cancel, lease, &[now.as_millis().to_string()]).await?;
        Ok(())
    }

    async fn cancel(&self, tenant: &TenantId, id: TaskId, now: Timestamp) -> Result<CancelOutcome> {
        let mut args = call(&self.scripts.cancel);
        args.arg(self.tenant_key(tenant)).arg(id.to_string()).arg(now.as_millis());
        let reply = self.eval(&self.scripts.cancel, args).await?;
        task_answer(&reply, id, "cancel")?;
        match text(&reply)?.as_str() {
            "cancelled" => Ok(CancelOutcome::Cancelled),
            "requested" => Ok(CancelOutcome::Requested),
            other => Err(corrupt("cancel reply", other)),
        }
    }

    async fn reclaim_expired(&self, now: Timestamp, limit: usize) -> Result<Vec<Reclaimed>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut args = call(&self.scripts.reclaim);
        args.arg(&self.prefix)
            .arg(&self.leases)
            .arg(now.as_millis())
            .arg(limit.min(i64::MAX as usize))
            .arg(&self.channel)
            .arg(self.node.to_string());
        let reply = array(self.eval(&self.scripts.reclaim, args).await?)?;
        reply
            .into_iter()
            .map(|row| {
                let row = array(row)?;
                let [tenant, task, rank, attempt, status] = row.as_slice() else {
                    return Err(corrupt("reclaim reply", format!("{row:?}")));
                };
                let rank: u8 = int(rank)?.try_into().map_err(|e| corrupt("priority", e))?;
                Ok(Reclaimed {
                    tenant: TenantId::new(text(tenant)?).map_err(|e| corrupt("tenant", e))?,
                    task: text(task)?.parse().map_err(|e| corrupt("task id", e))?,
                    priority: Priority::from_rank(rank).ok_or_else(|| corrupt("priority", rank))?,
                    attempt: int(attempt)?.try_into().map_err(|e| corrupt("attempt", e))?,
                    status: status_of(&text(status)?)?,
                })
            })
            .collect()
    }

    async fn replay_if(&self, tenant: &TenantId, id: TaskId, only_from: &[TaskStatus], now: Timestamp) -> Result<Task> {
        let from = crate::store::replay_from(only_from)?;
        let mut args = call(&self.scripts.replay);
        args.arg(self.tenant_key(tenant))
            .arg(now.as_millis())
            .arg(&self.channel)
            .arg(self.wake(tenant)?)
            .arg("one")
            .arg(id.to_string())
            .arg(from);
        let reply = self.eval(&self.scripts.replay, args).await?;
        task_answer(&reply, id, "replay")?;
        task_of(tenant, &row_fields(reply)?)
    }

    async fn replay_dead_letters(&self, tenant: &TenantId, filter: &TaskFilter, now: Timestamp) -> Result<u64> {
        let filter = filter.for_dead_letters()?;
        let mut args = call(&self.scripts.replay);
        args.arg(self.tenant_key(tenant)).arg(now.as_millis()).arg(&self.channel).arg(self.wake(tenant)?).arg("bulk");
        filter_args(&mut args, &filter);
        let n = int(&self.eval(&self.scripts.replay, args).await?)?;
        u64::try_from(n).map_err(|e| corrupt("count", e))
    }

    async fn purge(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        let mut args = call(&self.scripts.purge);
        args.arg(self.tenant_key(tenant)).arg("one").arg(id.to_string());
        let reply = self.eval(&self.scripts.purge, args).await?;
        task_answer(&reply, id, "purge")
    }

    async fn purge_finished(&self, tenant: &TenantId, filter: &TaskFilter, finished_before: Timestamp) -> Result<u64> {
        let filter = filter.for_purge()?;
        // Chunks keep each script short; tasks that do not match stay in the
        // index, so the next chunk starts after them.
        let mut offset = 0;
        let mut total = 0;
        loop {
            let mut args = call(&self.scripts.purge);
            args.arg(self.tenant_key(tenant)).arg("bulk").arg(finished_before.as_millis()).arg(offset).arg(PURGE_CHUNK);
            filter_args(&mut args, &filter);
            let reply = array(self.eval(&self.scripts.purge, args).await?)?;
            let [deleted, examined] = reply.as_slice() else {
                return Err(corrupt("purge reply", format!("{reply:?}")));
            };
            let (deleted, examined) = (int(deleted)?, int(examined)?);
            total += deleted;
            offset += examined - deleted;
            if examined < PURGE_CHUNK as i64 {
                return u64::try_from(total).map_err(|e| corrupt("count", e));
            }
        }
    }

    async fn get(&self, tenant: &TenantId, id: TaskId) -> Result<Task> {
        let map: HashMap<String, String> = self.query(redis::cmd("HGETALL").arg(self.task_key(tenant, id))).await?;
        if map.is_empty() {
            return Err(StoreError::NotFound(id));
        }
        match decoded(tenant, &map) {
            Ok(task) => Ok(task),
            Err(c) => {
                self.quarantine(tenant, vec![Corrupt { id: id.to_string(), error: c.error }]).await?;
                Err(StoreError::NotFound(id))
            }
        }
    }

    async fn list(&self, tenant: &TenantId, query: &TaskQuery) -> Result<Page<Task>> {
        let after = query.validate()?;
        let order = match query.order {
            SortOrder::Ascending => "a",
            SortOrder::Descending => "d",
        };
        let mut position = after.map(|s| s.to_string()).unwrap_or_default();
        let mut rows: Vec<(i64, std::result::Result<Task, Corrupt>)> = Vec::new();
        let wanted = query.limit + 1;
        loop {
            let mut args = call(&self.scripts.list);
            args.arg(self.tenant_key(tenant)).arg(order).arg(&position).arg(wanted - rows.len()).arg(LIST_BUDGET);
            filter_args(&mut args, &query.filter);
            let reply = array(self.eval(&self.scripts.list, args).await?)?;
            let mut items = reply.into_iter();
            let last = text(&items.next().unwrap_or(Value::Nil)).unwrap_or_default();
            let done = items.next().map(|v| int(&v)).transpose()?.unwrap_or(1) == 1;
            while let (Some(seq), Some(task)) = (items.next(), items.next()) {
                rows.push((int(&seq)?, decoded(tenant, &row_fields(task)?)));
            }
            if done || rows.len() >= wanted || last.is_empty() {
                break;
            }
            position = last;
        }
        let next_cursor = (rows.len() > query.limit).then(|| {
            rows.truncate(query.limit);
            Cursor::after(query.order, rows.last().expect("non-empty").0)
        });
        let mut page = Page { items: Vec::with_capacity(rows.len()), next_cursor, quarantined: Vec::new() };
        let mut bad = Vec::new();
        for (_, row) in rows {
            match row {
                Ok(task) => page.items.push(task),
                Err(c) => bad.push(c),
            }
        }
        page.quarantined = self.quarantine(tenant, bad).await?;
        Ok(page)
    }

    async fn output(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<OutputRecord>> {
        let key = format!("{}:o:{id}", self.tenant_key(tenant));
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(-1);
        let entries: Vec<String> = self.exists_then(tenant, id, cmd).await?;
        entries
            .iter()
            .map(|e| {
                let mut parts = e.splitn(4, '|');
                let (Some(attempt), Some(stream), Some(at), Some(data)) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return Err(corrupt("output entry", e));
                };
                Ok(OutputRecord {
                    attempt: attempt.parse().map_err(|e| corrupt("output attempt", e))?,
                    stream: stream.parse::<OutputStream>().map_err(|e| corrupt("output stream", e))?,
                    data: data.to_owned(),
                    at: Timestamp::from_millis(at.parse().map_err(|e| corrupt("output time", e))?),
                })
            })
            .collect()
    }

    async fn history(&self, tenant: &TenantId, id: TaskId) -> Result<Vec<HistoryEntry>> {
        let key = format!("{}:h:{id}", self.tenant_key(tenant));
        let mut cmd = redis::cmd("LRANGE");
        cmd.arg(key).arg(0).arg(-1);
        let entries: Vec<String> = self.exists_then(tenant, id, cmd).await?;
        entries
            .iter()
            .map(|e| {
                let parts: Vec<&str> = e.splitn(6, '|').collect();
                let [at, attempt, status, cancel, agent, error] = parts.as_slice() else {
                    return Err(corrupt("history entry", e));
                };
                Ok(HistoryEntry {
                    at: Timestamp::from_millis(at.parse().map_err(|e| corrupt("history time", e))?),
                    attempt: attempt.parse().map_err(|e| corrupt("history attempt", e))?,
                    status: status_of(status)?,
                    agent: (!agent.is_empty())
                        .then(|| AgentId::new(*agent))
                        .transpose()
                        .map_err(|e| corrupt("history agent", e))?,
                    error: (!error.is_empty())
                        .then(|| serde_json::from_str(error))
                        .transpose()
                        .map_err(|e| corrupt("history error", e))?,
                    cancel_requested: *cancel == "1",
                })
            })
            .collect()
    }

    async fn depth(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueDepth> {
        let base = self.tenant_key(tenant);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for p in Priority::ALL {
            pipe.zcount(format!("{base}:q:{}", p.rank()), "-inf", now.as_millis());
        }
        let counts: Vec<u64> = self.query_pipe(&pipe).await?;
        let mut depth = QueueDepth::default();
        for (p, n) in Priority::ALL.into_iter().zip(counts) {
            depth.add(p, n);
        }
        Ok(depth)
    }

    async fn counts(&self, tenant: &TenantId, now: Timestamp) -> Result<QueueCounts> {
        let mut args = call(&self.scripts.counts);
        args.arg(self.tenant_key(tenant)).arg(tenant.as_str()).arg(&self.leases).arg(now.as_millis());
        let reply = array(self.eval(&self.scripts.counts, args).await?)?;
        let [by_status, ready, scheduled, expired, oldest, quarantined] =
            <[Value; 6]>::try_from(reply).map_err(|r| corrupt("counts reply", format!("{r:?}")))?;
        let mut counts = QueueCounts::default();
        for (status, n) in fields(by_status)? {
            let n: i64 = n.parse().map_err(|e| corrupt("count", e))?;
            counts.add_status(status_of(&status)?, u64::try_from(n).map_err(|e| corrupt("count", e))?);
        }
        for n in array(ready)? {
            counts.ready += u64::try_from(int(&n)?).map_err(|e| corrupt("count", e))?;
        }
        counts.scheduled = u64::try_from(int(&scheduled)?).map_err(|e| corrupt("count", e))?;
        counts.expired_leases = u64::try_from(int(&expired)?).map_err(|e| corrupt("count", e))?;
        counts.quarantined = u64::try_from(int(&quarantined)?).map_err(|e| corrupt("count", e))?;
        let oldest = text(&oldest)?;
        if !oldest.is_empty() {
            counts.oldest_ready = Some(Timestamp::from_millis(oldest.parse().map_err(|e| corrupt("run_at", e))?));
        }
        Ok(counts)
    }

    async fn quarantined(&self, tenant: &TenantId, query: &QuarantineQuery) -> Result<Page<Quarantined>> {
        self.quarantine_list(tenant, query).await
    }

    async fn get_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<Quarantined> {
        self.quarantine_get(tenant, id).await
    }

    async fn drop_quarantined(&self, tenant: &TenantId, id: TaskId) -> Result<()> {
        self.quarantine_drop(tenant, id).await
    }

    async fn purge_quarantined(&self, tenant: &TenantId) -> Result<u64> {
        self.quarantine_purge(tenant).await
    }
}
