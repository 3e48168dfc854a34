-- Virtual keys: only the SHA-256 of the secret is stored, never the secret.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    team          TEXT,
    secret_hash   TEXT NOT NULL UNIQUE,
    secret_prefix TEXT NOT NULL,
    models        TEXT NOT NULL,            -- JSON array of model names; ["*"] grants every model
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT,
    rotations     BIGINT NOT NULL DEFAULT 0
);

-- Monotonic change counters that gateways poll to invalidate their caches.
CREATE TABLE store_versions (
    name    TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO store_versions (name, version) VALUES ('keys', 0);

CREATE FUNCTION tollgate_bump_keys_version() RETURNS trigger AS $$
BEGIN
    UPDATE store_versions SET version = version + 1 WHERE name = 'keys';
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
FOR EACH STATEMENT EXECUTE FUNCTION tollgate_bump_keys_version();

-- Running gateways, so key changes made elsewhere (CLI, other replicas) can wait until every
-- live gateway has applied them.
CREATE TABLE gateway_instances (
    id                TEXT PRIMARY KEY,
    pid               BIGINT NOT NULL,
    listen            TEXT NOT NULL,
    started_at_ms     BIGINT NOT NULL,
    heartbeat_ms      BIGINT NOT NULL,
    keys_version_seen BIGINT NOT NULL
);

-- One row per gateway call, denied calls included.
CREATE TABLE usage_records (
    id                    TEXT PRIMARY KEY,
    request_id            TEXT NOT NULL,
    received_at_ms        BIGINT NOT NULL,
    completed_at_ms       BIGINT NOT NULL,
    key_id                TEXT,
    team                  TEXT,
    method                TEXT NOT NULL,
    endpoint              TEXT NOT NULL,
    stream                BIGINT NOT NULL,
    requested_model       TEXT,
    served_model          TEXT,
    upstream_model        TEXT,
    provider              TEXT,
    status                BIGINT NOT NULL,
    error_code            TEXT,
    denied_stage          TEXT,
    latency_us            BIGINT NOT NULL,
    ttfb_us               BIGINT,
    upstream_latency_us   BIGINT,
    input_tokens          BIGINT NOT NULL,
    output_tokens         BIGINT NOT NULL,
    cached_input_tokens   BIGINT NOT NULL,
    reasoning_tokens      BIGINT NOT NULL,
    total_tokens          BIGINT NOT NULL,
    cost_nanos            BIGINT NOT NULL,
    provider_usage        TEXT,
    provider_request_id   TEXT,
    stream_status         TEXT,
    decisions             TEXT NOT NULL,
    user_agent            TEXT,
    policy_generation     BIGINT NOT NULL
);
CREATE INDEX usage_records_request_id ON usage_records (request_id);
CREATE INDEX usage_records_key_time ON usage_records (key_id, completed_at_ms);
CREATE INDEX usage_records_time ON usage_records (completed_at_ms);
