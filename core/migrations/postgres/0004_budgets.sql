-- Budgets managed through the CLI and the admin API (policy-declared ones live in the policy
-- directory); their spend lives in `counters`.
CREATE TABLE budgets (
    id            TEXT PRIMARY KEY,
    scope         TEXT NOT NULL,            -- organization | team | user | key
    subject       TEXT NOT NULL,            -- team name, owner or key id; '' for organization
    window_kind   TEXT NOT NULL,            -- daily | weekly | monthly | lifetime
    limit_nanos   BIGINT NOT NULL,
    timezone      TEXT NOT NULL,
    thresholds    TEXT NOT NULL,            -- JSON array of percentages
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    UNIQUE (scope, subject, window_kind)
);
INSERT INTO store_versions (name, version) VALUES ('budgets', 0);

CREATE FUNCTION tollgate_bump_budgets_version() RETURNS trigger AS $$
BEGIN
    UPDATE store_versions SET version = version + 1 WHERE name = 'budgets';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER budgets_changed AFTER INSERT OR UPDATE OR DELETE ON budgets
FOR EACH STATEMENT EXECUTE FUNCTION tollgate_bump_budgets_version();

-- One row per limited thing and window: budgets (nano-USD) and quotas (requests, tokens,
-- nano-USD, in-flight requests). `reserved` holds what in-flight requests may still spend.
CREATE TABLE counters (
    counter_id      TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    used            BIGINT NOT NULL DEFAULT 0,
    reserved        BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (counter_id, window_start_ms)
);

-- Outstanding holds of in-flight requests; expired ones are reclaimed by any gateway.
CREATE TABLE holds (
    id              TEXT NOT NULL,
    counter_id      TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    amount          BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (id, counter_id)
);
CREATE INDEX holds_expiry ON holds (expires_at_ms);

-- Threshold notifications already sent, once per budget window and threshold.
CREATE TABLE budget_alerts (
    counter_id      TEXT NOT NULL,
    window_start_ms BIGINT NOT NULL,
    threshold       BIGINT NOT NULL,
    at_ms           BIGINT NOT NULL,
    PRIMARY KEY (counter_id, window_start_ms, threshold)
);
