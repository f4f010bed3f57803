-- Agent sessions. The engine checks every state change against the lifecycle
-- table in session.rs before it writes; the store keeps the latest state.
CREATE TABLE sessions (
    id         TEXT    PRIMARY KEY,
    tenant     TEXT    NOT NULL,
    agent_id   TEXT    NOT NULL,
    task_id    TEXT,
    state      TEXT    NOT NULL,
    error      TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX sessions_tenant ON sessions (tenant, created_at, id);
CREATE INDEX sessions_live ON sessions (tenant, agent_id) WHERE state NOT IN ('completed', 'failed', 'cancelled', 'timeout', 'error');
