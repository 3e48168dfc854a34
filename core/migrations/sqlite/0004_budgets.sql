-- Budgets managed through the CLI and the admin API (policy-declared ones live in the policy
-- directory); their spend lives in `counters`.
CREATE TABLE budgets (
    id            TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,            -- organization | team | user | key
    subject       TEXT NOT NULL,            -- team name, owner or key id; '' for organization
    window_kind   TEXT NOT NULL,            -- daily | weekly | monthly | lifetime
    limit_nanos   INTEGER NOT NULL,
    timezone      TEXT NOT NULL,
    thresholds    TEXT NOT NULL,            -- JSON array of percentages
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    UNIQUE (scope, subject, window_kind)
);
INSERT INTO store_versions (name, version) VALUES ('budgets', 0);

CREATE TRIGGER budgets_changed_insert AFTER INSERT ON budgets
BEGIN UPDATE store_versions SET version = version + 1 WHERE name = 'budgets'; END;
CREATE TRIGGER budgets_changed_update AFTER UPDATE ON budgets
BEGIN UPDATE store_versions SET version = version + 1 WHERE name = 'budgets'; END;
CREATE TRIGGER budgets_changed_delete AFTER DELETE ON budgets
BEGIN UPDATE store_versions SET version = version + 1 WHERE name = 'budgets'; END;

-- One row per limited thing and window: budgets (nano-USD) and quotas (requests, tokens,
-- nano-USD, in-flight requests). `reserved` holds what in-flight requests may still spend.
CREATE TABLE counters (
    counter_id      TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL,
    used            INTEGER NOT NULL DEFAULT 0,
    reserved        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (counter_id, window_start_ms)
);

-- Outstanding holds of in-flight requests; expired ones are reclaimed by any gateway.
CREATE TABLE holds (
    id              TEXT NOT NULL,
    counter_id      TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL,
    amount          INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (id, counter_id)
);
CREATE INDEX holds_expiry ON holds (expires_at_ms);

-- Threshold notifications already sent, once per budget window and threshold.
CREATE TABLE budget_alerts (
    counter_id      TEXT NOT NULL,
    window_start_ms INTEGER NOT NULL,
    threshold       INTEGER NOT NULL,
    at_ms           INTEGER NOT NULL,
    PRIMARY KEY (counter_id, window_start_ms, threshold)
);
