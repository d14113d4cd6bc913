-- Outpost gateway store, version 1.
-- Written for both SQLite and PostgreSQL: TEXT and BIGINT only, times in unix milliseconds,
-- flags as 0/1 integers, no engine-specific syntax.

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL UNIQUE,
    customer     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    max_uses     BIGINT NOT NULL,
    uses         BIGINT NOT NULL DEFAULT 0,
    auto_approve BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE appliances (
    id              TEXT PRIMARY KEY,
    customer        TEXT NOT NULL,
    state           TEXT NOT NULL,
    hostname        TEXT NOT NULL,
    token_id        TEXT NOT NULL REFERENCES tokens (id),
    key_fingerprint TEXT NOT NULL UNIQUE,
    csr_pem         TEXT NOT NULL,
    enrolled_at     BIGINT NOT NULL,
    approved_at     BIGINT,
    revoked_at      BIGINT,
    last_seen       BIGINT,
    last_seq        BIGINT NOT NULL DEFAULT 0,
    batches         BIGINT NOT NULL DEFAULT 0,
    records         BIGINT NOT NULL DEFAULT 0,
    inventory_json  TEXT,
    inventory_hash  TEXT,
    inventory_at    BIGINT,
    metrics_json    TEXT,
    metrics_at      BIGINT
);

CREATE TABLE certificates (
    serial       TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL UNIQUE,
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    pem          TEXT NOT NULL,
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    issued_at    BIGINT NOT NULL
);
CREATE INDEX certificates_by_appliance ON certificates (appliance_id, issued_at);

CREATE TABLE batches (
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    seq          BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    record_count BIGINT NOT NULL,
    PRIMARY KEY (appliance_id, seq)
);

CREATE TABLE records (
    appliance_id TEXT NOT NULL,
    seq          BIGINT NOT NULL,
    idx          BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    collected_at BIGINT NOT NULL,
    body         TEXT NOT NULL,
    PRIMARY KEY (appliance_id, seq, idx)
);

CREATE TABLE commands (
    id           TEXT PRIMARY KEY,
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    kind         TEXT NOT NULL,
    args         TEXT NOT NULL,
    state        TEXT NOT NULL,
    output       TEXT,
    created_at   BIGINT NOT NULL,
    delivered_at BIGINT,
    completed_at BIGINT
);
CREATE INDEX commands_by_appliance ON commands (appliance_id, state);
