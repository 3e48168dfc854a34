-- Usage rows the database refused even after they were sanitised (issue 12): kept whole, with
-- the error, for a person to read and replay. `entry` is the JSON of the record and the ledger
-- charges it carried (not applied to the counters, so stored spend = the sum of stored usage).
CREATE TABLE usage_dead_letters (
    id           TEXT PRIMARY KEY,
    failed_at_ms BIGINT NOT NULL,
    error        TEXT NOT NULL,
    entry        TEXT NOT NULL
);
