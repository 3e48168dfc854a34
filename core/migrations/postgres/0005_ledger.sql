-- Settlements already applied, by hold id: a settlement retried after an ambiguous commit
-- finds its id here and charges nothing twice. Rows older than a day are pruned.
CREATE TABLE settled_holds (
    hold_id    TEXT PRIMARY KEY,
    settled_at_ms BIGINT NOT NULL
);
CREATE INDEX settled_holds_age ON settled_holds (settled_at_ms);
