-- Virtual keys: only the SHA-256 of the secret is stored, never the secret.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    team          TEXT,
    secret_hash   TEXT NOT NULL UNIQUE,
    secret_prefix TEXT NOT NULL,
    models        TEXT NOT NULL,            -- JSON array of model names; ["*"] grants every model
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    revoked_at_ms INTEGER,
    rotations     INTEGER NOT NULL DEFAULT 0
);

-- Monotonic change counters that gateways poll to invalidate their caches.
CREATE TABLE store_versions (
    name    TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
INSERT INTO store_versions (name, version) VALUES ('keys', 0);

CREATE TRIGGER api_keys_changed_insert AFTER INSERT ON api_keys
BEGIN UPDATE store_versions SET version = version + 1 WHERE name = 'keys'; END;
CREATE TRIGGER api_keys_changed_update AFTER UPDATE ON api_keys
BEGIN UPDATE store_versions SET version = version + 1 WHERE name = 'keys'; END;
CREATE TRIGGER api_keys_changed_delete AFTER DELETE ON api_keys
BEGIN UPDATE store_versions SET version = version + 1 WHERE name = 'keys'; END;

-- Running gateways, so key changes made elsewhere (CLI, other replicas) can wait until every
-- live gateway has applied them.
CREATE TABLE gateway_instances (
    id                TEXT PRIMARY KEY,
    pid               INTEGER NOT NULL,
    listen            TEXT NOT NULL,
    started_at_ms     INTEGER NOT NULL,
    heartbeat_ms      INTEGER NOT NULL,
    keys_version_seen INTEGER NOT NULL
);

-- One row per gateway call, denied calls included.
CREATE TABLE usage_records (
    id                    TEXT PRIMARY KEY,
    request_id            TEXT NOT NULL,
    received_at_ms        INTEGER NOT NULL,
    completed_at_ms       INTEGER NOT NULL,
    key_id                TEXT,
    team                  TEXT,
    method                TEXT NOT NULL,
    endpoint              TEXT NOT NULL,
    stream                INTEGER NOT NULL,
    requested_model       TEXT,
    served_model          TEXT,
    upstream_model        TEXT,
    provider              TEXT,
    status                INTEGER NOT NULL,
    error_code            TEXT,
    denied_stage          TEXT,
    latency_us            INTEGER NOT NULL,
    ttfb_us               INTEGER,
    upstream_latency_us   INTEGER,
    input_tokens          INTEGER NOT NULL,
    output_tokens         INTEGER NOT NULL,
    cached_input_tokens   INTEGER NOT NULL,
    reasoning_tokens      INTEGER NOT NULL,
    total_tokens          INTEGER NOT NULL,
    cost_nanos            INTEGER NOT NULL,
    provider_usage        TEXT,                -- the raw upstream usage object, unchanged
    provider_request_id   TEXT,
    stream_status         TEXT,
    decisions             TEXT NOT NULL,       -- JSON: the stage trail
    user_agent            TEXT,
    policy_generation     INTEGER NOT NULL
);
CREATE INDEX usage_records_request_id ON usage_records (request_id);
CREATE INDEX usage_records_key_time ON usage_records (key_id, completed_at_ms);
CREATE INDEX usage_records_time ON usage_records (completed_at_ms);
