-- Leases of the shared store (see the PostgreSQL migration of the same number). The embedded
-- store keeps counters in one gateway's memory and never leases; the table exists so both
-- backends have the same schema.
CREATE TABLE leases (
    counter_id      TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL,
    lease_id        TEXT NOT NULL,
    replica_id      TEXT NOT NULL,
    amount          INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    recalled        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (counter_id, window_start_ms, lease_id)
);
CREATE INDEX leases_expiry ON leases (expires_at_ms);
CREATE INDEX leases_holder ON leases (replica_id);
