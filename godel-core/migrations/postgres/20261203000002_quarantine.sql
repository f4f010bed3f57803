-- Task rows that did not decode (something other than Godel wrote them),
-- moved out of `tasks` with the reason so that they never block the queue.
-- `seq` is the task's own sequence number, which orders listings; `raw` is
-- the row as `row_to_json` writes it.
CREATE TABLE quarantine (
    seq    bigint PRIMARY KEY,
    tenant text   NOT NULL,
    id     text   NOT NULL,
    error  text   NOT NULL,
    raw    text   NOT NULL
);

CREATE INDEX quarantine_tenant ON quarantine (tenant, seq);
CREATE INDEX quarantine_id ON quarantine (tenant, id);

ALTER TABLE quarantine ENABLE ROW LEVEL SECURITY;
ALTER TABLE quarantine FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_wall ON quarantine
    USING (tenant = current_setting('godel.tenant', true))
    WITH CHECK (tenant = current_setting('godel.tenant', true));
