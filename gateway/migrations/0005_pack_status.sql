-- Outpost gateway store, version 5: whether each appliance applied the health packs it was
-- delivered, and the override conflicts its engine reported (issue 4).
-- Portable as 0001: TEXT and BIGINT only, no engine-specific syntax; the same file runs on
-- SQLite and PostgreSQL.

-- The latest `pack_status` record per appliance (a newer collection time replaces it).
-- applied is 1 when the delivered packs are in force, 0 when the box refused them (and
-- kept its last good set); error holds every problem as FILE:LINE: reason.
CREATE TABLE pack_status (
    appliance_id TEXT PRIMARY KEY REFERENCES appliances (id),
    etag TEXT,
    packs_json TEXT NOT NULL,
    applied BIGINT NOT NULL,
    error TEXT,
    conflicts_json TEXT NOT NULL,
    reported_at BIGINT NOT NULL
);
