-- The registry of what nodes announce (agents, gateway instances) and the
-- spend per tenant and budget period. See store/cluster.rs.
CREATE TABLE members (
    tenant     TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    node       TEXT    NOT NULL,
    doc        TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, kind, id)
) WITHOUT ROWID;

CREATE TABLE spend (
    tenant TEXT    NOT NULL,
    period TEXT    NOT NULL,
    micros INTEGER NOT NULL CHECK (micros >= 0),
    PRIMARY KEY (tenant, period)
) WITHOUT ROWID;
