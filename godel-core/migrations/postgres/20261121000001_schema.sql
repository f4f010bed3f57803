-- Godel's PostgreSQL schema. Every object is created unqualified, in the
-- schema the store's `search_path` names (one schema per Godel namespace).
-- Times are milliseconds since the Unix epoch, passed in by the caller (the
-- store never reads the clock); priority is its rank (0 = critical .. 3 =
-- low) so that ORDER BY sorts it. JSON documents are kept as the exact text
-- the store wrote, so they read back unchanged.

CREATE TABLE tasks (
    seq              bigint   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               uuid     NOT NULL UNIQUE,
    tenant           text     NOT NULL,
    priority         smallint NOT NULL CHECK (priority BETWEEN 0 AND 3),
    status           text     NOT NULL CHECK (status IN ('pending', 'assigned', 'running', 'completed', 'failed', 'cancelled', 'dead_letter')),
    payload          text     NOT NULL,
    capabilities     text[]   NOT NULL DEFAULT '{}',
    affinity_key     text,
    idempotency_key  text,
    parent_id        uuid,
    attempt          integer  NOT NULL DEFAULT 0,
    max_attempts     integer  NOT NULL CHECK (max_attempts >= 1),
    timeout_ms       bigint,
    run_at           bigint   NOT NULL,
    agent_id         text,
    lease_token      uuid,
    lease_expires_at bigint,
    cancel_requested boolean  NOT NULL DEFAULT false,
    result           text,
    error            text,
    created_at       bigint   NOT NULL,
    updated_at       bigint   NOT NULL,
    started_at       bigint,
    completed_at     bigint,
    dead_lettered_at bigint
);

-- Rule 7: one task per (tenant, idempotency key).
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Rule 2: the claim scan walks pending tasks in (priority, run_at, seq) order.
CREATE INDEX tasks_pending ON tasks (tenant, priority, run_at, seq) WHERE status = 'pending';
-- Rule 4: the reclaim sweep finds lapsed leases without scanning.
CREATE INDEX tasks_leases ON tasks (lease_expires_at) WHERE status IN ('assigned', 'running');
-- Listings and counts per tenant.
CREATE INDEX tasks_tenant_status ON tasks (tenant, status, seq);
CREATE INDEX tasks_tenant_seq ON tasks (tenant, seq);

-- Output and history rows are only ever read by task, in insertion order:
-- their `(task_seq, seq)` index is all they need, and a primary key would be
-- one more index to update per row on the hot path.
CREATE TABLE task_output (
    seq      bigint  GENERATED ALWAYS AS IDENTITY,
    task_seq bigint  NOT NULL REFERENCES tasks (seq) ON DELETE CASCADE,
    tenant   text    NOT NULL,
    attempt  integer NOT NULL,
    stream   text    NOT NULL,
    data     text    NOT NULL,
    at       bigint  NOT NULL
);

CREATE INDEX task_output_task ON task_output (task_seq, seq);

-- Every change of a task's status, attempt or cancel flag, written by the
-- triggers below in the same statement as the change itself, so the history
-- can never disagree with the task. `task_seq` is deliberately not a foreign
-- key: the check cost about 12 µs per history row, on every claim and
-- completion, and the rows are only ever written by those triggers for rows
-- that exist. Purging a task deletes its history in the same statement.
CREATE TABLE task_history (
    seq              bigint  GENERATED ALWAYS AS IDENTITY,
    task_seq         bigint  NOT NULL,
    tenant           text    NOT NULL,
    at               bigint  NOT NULL,
    attempt          integer NOT NULL,
    status           text    NOT NULL,
    agent_id         text,
    error            text,
    cancel_requested boolean NOT NULL
);

CREATE INDEX task_history_task ON task_history (task_seq, seq);

-- Agent sessions. The engine checks every state change against the lifecycle
-- table in session.rs before it writes; the store keeps the latest state.
CREATE TABLE sessions (
    id         uuid   PRIMARY KEY,
    tenant     text   NOT NULL,
    agent_id   text   NOT NULL,
    task_id    uuid,
    state      text   NOT NULL,
    error      text,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL
);

CREATE INDEX sessions_tenant ON sessions (tenant, created_at, id);
CREATE INDEX sessions_live ON sessions (tenant, agent_id) WHERE state NOT IN ('completed', 'failed', 'cancelled', 'timeout', 'error');

-- The registry of what nodes announce (agents, gateway instances) and the
-- spend per tenant and budget period. See store/cluster.rs.
CREATE TABLE members (
    tenant     text   NOT NULL,
    kind       text   NOT NULL,
    id         text   NOT NULL,
    node       text   NOT NULL,
    doc        text   NOT NULL,
    updated_at bigint NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (tenant, kind, id)
);

CREATE TABLE spend (
    tenant text   NOT NULL,
    period text   NOT NULL,
    micros bigint NOT NULL CHECK (micros >= 0),
    PRIMARY KEY (tenant, period)
);

-- Cluster messages too large for a NOTIFY payload (about 8,000 bytes): the
-- body waits here and the notification carries its id. Senders keep the
-- newest 1,000 rows; a receiver that falls further behind loses messages,
-- which costs latency, never correctness (see store/cluster.rs).
CREATE TABLE cluster_messages (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    body text   NOT NULL
);

-- History and wake-ups, once per statement: the transition tables hold every
-- row the statement changed, so a batch of 1,000 tasks costs one INSERT into
-- the history, not 1,000 trigger calls. A task that becomes ready now
-- (pending with run_at at or before the statement's time) wakes the
-- dispatchers of the other nodes: one NOTIFY per tenant, delivered at commit
-- and only if the transaction commits. The payload is a cluster Envelope
-- whose origin is the writing store handle (the `godel.node` setting the
-- store sets in every transaction), so that handle drops its own echo.
-- `SET search_path FROM CURRENT` pins the functions to this schema, whatever
-- search path the writing session has.
CREATE FUNCTION godel_tasks_inserted() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO task_history (task_seq, tenant, at, attempt, status, agent_id, error, cancel_requested)
    SELECT n.seq, n.tenant, n.updated_at, n.attempt, n.status, n.agent_id, n.error, n.cancel_requested
    FROM new_rows n ORDER BY n.seq;
    PERFORM pg_notify('godel_' || TG_TABLE_SCHEMA,
        json_build_object('origin', current_setting('godel.node', true), 'type', 'wake', 'tenant', w.tenant)::text)
    FROM (SELECT DISTINCT n.tenant FROM new_rows n WHERE n.status = 'pending' AND n.run_at <= n.updated_at) w;
    RETURN NULL;
END
$$;

CREATE FUNCTION godel_tasks_updated() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO task_history (task_seq, tenant, at, attempt, status, agent_id, error, cancel_requested)
    SELECT n.seq, n.tenant, n.updated_at, n.attempt, n.status, n.agent_id, n.error, n.cancel_requested
    FROM new_rows n JOIN old_rows o ON o.seq = n.seq
    WHERE n.status <> o.status OR n.attempt <> o.attempt OR n.cancel_requested <> o.cancel_requested
    ORDER BY n.seq;
    PERFORM pg_notify('godel_' || TG_TABLE_SCHEMA,
        json_build_object('origin', current_setting('godel.node', true), 'type', 'wake', 'tenant', w.tenant)::text)
    FROM (SELECT DISTINCT n.tenant FROM new_rows n JOIN old_rows o ON o.seq = n.seq
          WHERE n.status = 'pending' AND o.status <> 'pending' AND n.run_at <= n.updated_at) w;
    RETURN NULL;
END
$$;

CREATE TRIGGER tasks_inserted AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION godel_tasks_inserted();
CREATE TRIGGER tasks_updated AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION godel_tasks_updated();

-- Row-level security: a second wall behind the `tenant = $1` in every query
-- (rule 9). The store sets `godel.tenant` at the start of every transaction;
-- a query that forgot its tenant clause still sees and touches only that
-- tenant's rows. FORCE applies the policies to the tables' owner too;
-- superusers and BYPASSRLS roles skip them, so run Godel as an ordinary role.
-- The one cross-tenant call, the reclaim sweep, sets `godel.sweep = reclaim`
-- instead, which lets it read tasks and move only leased ones.
ALTER TABLE tasks ENABLE ROW LEVEL SECURITY;
ALTER TABLE tasks FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON tasks
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));
CREATE POLICY reclaim_sweep_reads ON tasks FOR SELECT
    USING (current_setting('godel.sweep', true) = 'reclaim');
CREATE POLICY reclaim_sweep_moves ON tasks FOR UPDATE
    USING (current_setting('godel.sweep', true) = 'reclaim' AND status IN ('assigned', 'running'))
    WITH CHECK (current_setting('godel.sweep', true) = 'reclaim');

ALTER TABLE task_history ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_history FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON task_history
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));
CREATE POLICY reclaim_sweep_writes ON task_history FOR INSERT
    WITH CHECK (current_setting('godel.sweep', true) = 'reclaim');

ALTER TABLE task_output ENABLE ROW LEVEL SECURITY;
ALTER TABLE task_output FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON task_output
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));

ALTER TABLE sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON sessions
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));

ALTER TABLE members ENABLE ROW LEVEL SECURITY;
ALTER TABLE members FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON members
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));

ALTER TABLE spend ENABLE ROW LEVEL SECURITY;
ALTER TABLE spend FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON spend
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));
