-- Outpost gateway store, version 4: staged updates (issue 5).
-- Portable as 0001: TEXT and BIGINT only, no engine-specific syntax; the same file runs on
-- SQLite and PostgreSQL.

-- Which agent on the box a command is for: `collector` (every command before this version)
-- or `updater` (`set_window`, `restart`). Each agent long-polls its own queue.
ALTER TABLE commands ADD COLUMN agent TEXT NOT NULL DEFAULT 'collector';
CREATE INDEX commands_by_agent ON commands (appliance_id, agent, state);

-- Maintenance windows set by the VAR: scope `customer` (every appliance of the customer)
-- or `appliance` (one appliance id, which overrides its customer's). `spec` is the JSON of
-- outpost_proto::update::WindowSpec, validated before it is stored.
CREATE TABLE windows (
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    spec TEXT NOT NULL,
    set_at BIGINT NOT NULL,
    PRIMARY KEY (scope, target)
);

-- The latest state the updater reported (JSON of outpost_proto::update::UpdateState).
CREATE TABLE update_states (
    appliance_id TEXT PRIMARY KEY REFERENCES appliances (id),
    state_json TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
