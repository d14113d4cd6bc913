-- Outpost gateway store, version 6: the values health packs' collect rules pick on the box
-- (issue 4), from `collected` records.
-- Portable as 0001: plain types, no engine-specific syntax; the same file runs on SQLite
-- and PostgreSQL. DOUBLE PRECISION is a REAL in SQLite and a float8 in PostgreSQL.

-- One row per value: the collect rule, the object (CLASS/ID), the metric, the value and
-- when it was sampled on the box (unix ms).
CREATE TABLE collected (
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    rule TEXT NOT NULL,
    object TEXT NOT NULL,
    metric TEXT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX collected_by_appliance ON collected (appliance_id, at);
