-- The admin API (issue 13): teams, users, stored admin tokens, the audit log and key rotations.
-- A key's user is the existing `api_keys.owner` column (shown to access rules as key.owner).

CREATE TABLE teams (
    id            TEXT PRIMARY KEY,        -- a slug chosen by the creator; keys' team refers to it
    name          TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,        -- a slug; keys' owner (user) refers to it
    name          TEXT NOT NULL,
    email         TEXT,
    team          TEXT,
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

-- Admin tokens: only the SHA-256 of the secret is stored, like virtual keys.
CREATE TABLE admin_tokens (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    role          TEXT NOT NULL,           -- admin | read
    secret_hash   TEXT NOT NULL UNIQUE,
    secret_prefix TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);

-- Every admin change and policy reload: who, what, and the object before and after (never a
-- secret).
CREATE TABLE audit_log (
    id         TEXT PRIMARY KEY,           -- UUIDv7: sorts by time
    at_ms      INTEGER NOT NULL,
    actor      TEXT NOT NULL,              -- admin token id (`env`, `cli`, `system` or a stored token)
    action     TEXT NOT NULL,              -- key.create, key.revoke, budget.update, policy.reload, ...
    target     TEXT,
    before     TEXT,                       -- JSON or NULL
    after      TEXT                        -- JSON or NULL
);
CREATE INDEX audit_log_at ON audit_log (at_ms);

CREATE TABLE key_rotations (
    id         TEXT PRIMARY KEY,
    key_id     TEXT NOT NULL,
    at_ms      INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    old_prefix TEXT NOT NULL,
    new_prefix TEXT NOT NULL
);
CREATE INDEX key_rotations_key ON key_rotations (key_id, at_ms);
CREATE INDEX usage_records_received ON usage_records (received_at_ms);
