-- API keys (only their SHA-256 hash, in hex) and the append-only audit log.
-- See credential.rs and the Credentials trait in store/mod.rs.
CREATE TABLE api_keys (
    id           uuid   PRIMARY KEY,
    hash         text   NOT NULL UNIQUE,
    name         text   NOT NULL,
    tenant       text   NOT NULL,
    role         text   NOT NULL,
    prefix       text   NOT NULL,
    created_at   bigint NOT NULL,
    expires_at   bigint,
    last_used_at bigint,
    revoked_at   bigint
);

CREATE INDEX api_keys_by_tenant ON api_keys (tenant, created_at DESC, id DESC);

CREATE TABLE audit_log (
    seq        bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         bigint  NOT NULL,
    credential text,
    tenant     text    NOT NULL,
    role       text,
    action     text    NOT NULL,
    target     text,
    outcome    text    NOT NULL CHECK (outcome IN ('allowed', 'denied', 'failed')),
    status     integer NOT NULL,
    request_id text    NOT NULL,
    source     text    NOT NULL
);

CREATE INDEX audit_log_by_tenant ON audit_log (tenant, seq);
CREATE INDEX audit_log_by_time ON audit_log (at);

-- Row-level security, as for the tables of the first migration: a
-- transaction scoped to a tenant (`godel.tenant`) sees only that tenant's
-- keys and audit entries. Authentication looks a key up by its hash before
-- the tenant is known, and key management and the audit log span tenants,
-- so the store marks those transactions with `godel.sweep` (`keys` or
-- `audit`), as the reclaim sweep does; nothing else reaches these rows.
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON api_keys
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));
CREATE POLICY key_sweep ON api_keys
    USING (current_setting('godel.sweep', true) = 'keys')
    WITH CHECK (current_setting('godel.sweep', true) = 'keys');

-- The audit log is append-only: no policy allows an UPDATE, so one changes
-- no row, and only the retention sweep (`godel.sweep = audit`) deletes.
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_reads ON audit_log FOR SELECT
    USING (tenant = current_setting('godel.tenant', true));
CREATE POLICY tenant_appends ON audit_log FOR INSERT
    WITH CHECK (tenant = current_setting('godel.tenant', true));
CREATE POLICY audit_sweep_reads ON audit_log FOR SELECT
    USING (current_setting('godel.sweep', true) = 'audit');
CREATE POLICY audit_sweep_appends ON audit_log FOR INSERT
    WITH CHECK (current_setting('godel.sweep', true) = 'audit');
CREATE POLICY audit_retention ON audit_log FOR DELETE
    USING (current_setting('godel.sweep', true) = 'audit');

-- Cluster messages belong to no tenant: only the connections of a Godel
-- node, which carry their node id in `godel.node` (set for every connection
-- the store opens), read or write them.
ALTER TABLE cluster_messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE cluster_messages FORCE ROW LEVEL SECURITY;
CREATE POLICY nodes_only ON cluster_messages
    USING (coalesce(current_setting('godel.node', true), '') <> '')
    WITH CHECK (coalesce(current_setting('godel.node', true), '') <> '');
