-- API keys (only their SHA-256 hash, in hex) and the append-only audit log.
-- See credential.rs and the Credentials trait in store/mod.rs.
CREATE TABLE api_keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    hash         TEXT    NOT NULL UNIQUE,
    name         TEXT    NOT NULL,
    tenant       TEXT    NOT NULL,
    role         TEXT    NOT NULL,
    prefix       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER,
    revoked_at   INTEGER
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at DESC, id DESC);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    credential TEXT,
    tenant     TEXT    NOT NULL,
    role       TEXT,
    action     TEXT    NOT NULL,
    target     TEXT,
    outcome    TEXT    NOT NULL,
    status     INTEGER NOT NULL,
    request_id TEXT    NOT NULL,
    source     TEXT    NOT NULL
);

CREATE INDEX audit_log_by_tenant ON audit_log (tenant, seq);
CREATE INDEX audit_log_by_time ON audit_log (at);
