-- Outpost gateway store, version 7: indexes for what every gateway polls twice a second
-- (issue 7). Portable as 0001: partial indexes run on SQLite and PostgreSQL alike.

-- The revocation mark (count and latest revoked_at of revoked appliances), which clears
-- the gateways' certificate caches: an index of the revoked appliances only, so the poll
-- reads a handful of rows, not the whole fleet.
CREATE INDEX appliances_revoked ON appliances (revoked_at) WHERE state = 'revoked';

-- The command queue mark and the appliances with queued commands (whose long-polls are
-- woken): an index of the queued commands only, not of the whole command history.
CREATE INDEX commands_queued ON commands (created_at, appliance_id) WHERE state = 'queued';
