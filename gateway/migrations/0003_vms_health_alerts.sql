-- Outpost gateway store, version 3: guests, health and alerts judged on the box.
-- Portable as 0001: TEXT and BIGINT only, no engine-specific syntax; the same file runs on
-- SQLite and PostgreSQL.

-- The latest guest list per appliance, kept from `vm_inventory` deltas (a full list
-- replaces it) and `vm_metrics` samples. vm_key is the guest's UUID, or `name:NAME`.
CREATE TABLE vms (
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    vm_key TEXT NOT NULL,
    name TEXT NOT NULL,
    inventory_json TEXT NOT NULL,
    added_at BIGINT NOT NULL,
    changed_at BIGINT NOT NULL,
    metrics_json TEXT,
    metrics_at BIGINT,
    PRIMARY KEY (appliance_id, vm_key)
);

-- The current state of every monitor (and, under monitor `health`, every object's
-- rolled-up health) as the box judged it; `since` is when it changed to that state.
CREATE TABLE health_states (
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    object TEXT NOT NULL,
    monitor TEXT NOT NULL,
    state TEXT NOT NULL,
    since BIGINT NOT NULL,
    PRIMARY KEY (appliance_id, object, monitor)
);

-- Every state change, as history.
CREATE TABLE health_changes (
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    object TEXT NOT NULL,
    monitor TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX health_changes_by_appliance ON health_changes (appliance_id, at);

-- Alerts raised on the box, open while resolved_at is NULL.
CREATE TABLE alerts (
    appliance_id TEXT NOT NULL REFERENCES appliances (id),
    id TEXT NOT NULL,
    rule TEXT NOT NULL,
    monitor TEXT NOT NULL,
    object TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    raised_at BIGINT NOT NULL,
    resolved_at BIGINT,
    resolve_reason TEXT,
    PRIMARY KEY (appliance_id, id)
);

-- Health packs imported at the gateway (TOML source, validated at import). A re-import
-- of the same name with other content replaces it and bumps its version.
CREATE TABLE packs (
    name TEXT PRIMARY KEY,
    toml TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    version BIGINT NOT NULL,
    imported_at BIGINT NOT NULL
);

-- Which packs go to which appliances: scope `customer` (every appliance of the customer)
-- or `appliance` (one appliance id).
CREATE TABLE pack_assignments (
    pack_name TEXT NOT NULL REFERENCES packs (name),
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    assigned_at BIGINT NOT NULL,
    PRIMARY KEY (pack_name, scope, target)
);
