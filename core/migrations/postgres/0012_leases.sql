-- Leases of the shared store: each replica holds a slice of a counter window (budget or quota)
-- and admits requests from it in memory. A lease's `amount` is part of the counter's
-- `reserved`, so `used + reserved <= limit` still bounds every replica together. A charge
-- settled from a slice moves from the lease into `used` in the same transaction as the usage
-- row it comes from; an expired lease (its replica died) is returned by any replica.
-- `lease_id` is `<replica>.<epoch>`: a replica that lost a lease starts a new epoch, so a late
-- charge of the old one never shrinks the new one. `recalled` (0 or 1): another replica was refused on
-- this counter and asks the holder to return what it does not use.
CREATE TABLE leases (
    counter_id      TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    lease_id        TEXT NOT NULL,
    replica_id      TEXT NOT NULL,
    amount          BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    recalled        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (counter_id, window_start_ms, lease_id)
);
CREATE INDEX leases_expiry ON leases (expires_at_ms);
CREATE INDEX leases_holder ON leases (replica_id);
