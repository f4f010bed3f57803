-- Tasks and their output. Times are milliseconds since the Unix epoch;
-- priority is its rank (0 = critical .. 3 = low) so that ORDER BY sorts it.
CREATE TABLE tasks (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT    NOT NULL UNIQUE,
    tenant           TEXT    NOT NULL,
    priority         INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 3),
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'assigned', 'running', 'completed', 'failed', 'cancelled', 'dead_letter')),
    payload          TEXT    NOT NULL,
    capabilities     TEXT    NOT NULL DEFAULT '[]',
    affinity_key     TEXT,
    idempotency_key  TEXT,
    parent_id        TEXT,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
    timeout_ms       INTEGER,
    run_at           INTEGER NOT NULL,
    agent_id         TEXT,
    lease_token      TEXT,
    lease_expires_at INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    completed_at     INTEGER,
    dead_lettered_at INTEGER
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

CREATE TABLE task_output (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    task_seq INTEGER NOT NULL REFERENCES tasks (seq) ON DELETE CASCADE,
    attempt  INTEGER NOT NULL,
    stream   TEXT    NOT NULL,
    data     TEXT    NOT NULL,
    at       INTEGER NOT NULL
);

CREATE INDEX task_output_task ON task_output (task_seq, seq);
