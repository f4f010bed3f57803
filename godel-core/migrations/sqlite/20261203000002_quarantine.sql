-- Task rows that did not decode (something other than Godel wrote them),
-- moved out of `tasks` with the reason so that they never block the queue.
-- `seq` is the task's own sequence number (never reused: `tasks.seq` is
-- AUTOINCREMENT), which orders listings; `raw` is a JSON object of the
-- row's columns as stored.
CREATE TABLE quarantine (
    seq    INTEGER PRIMARY KEY,
    tenant TEXT    NOT NULL,
    id     TEXT    NOT NULL,
    error  TEXT    NOT NULL,
    raw    TEXT    NOT NULL
);

CREATE INDEX quarantine_tenant ON quarantine (tenant, seq);
CREATE INDEX quarantine_id ON quarantine (tenant, id);
