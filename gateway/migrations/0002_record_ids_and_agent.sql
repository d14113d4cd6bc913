-- Outpost gateway store, version 2: record ids and the collector's self-metrics.
-- Portable as 0001: TEXT and BIGINT only, no engine-specific syntax; the same file runs on
-- SQLite and PostgreSQL.

-- Every record carries the id the collector gave it when it was spooled. A record is
-- stored once per appliance whatever batch carries it: inserts skip an id already stored.
-- Rows stored before this version have no id (NULL, which a unique index never matches).
ALTER TABLE records ADD COLUMN rid BIGINT;
CREATE UNIQUE INDEX records_by_rid ON records (appliance_id, rid);

-- Highest record id stored per appliance, answered with every acknowledgement.
ALTER TABLE appliances ADD COLUMN last_rid BIGINT NOT NULL DEFAULT 0;

-- The latest self-metrics record (JSON) and the loss counters it reported.
ALTER TABLE appliances ADD COLUMN agent_json TEXT;
ALTER TABLE appliances ADD COLUMN agent_at BIGINT;
ALTER TABLE appliances ADD COLUMN dropped_records BIGINT NOT NULL DEFAULT 0;
ALTER TABLE appliances ADD COLUMN spool_corrupt_records BIGINT NOT NULL DEFAULT 0;
