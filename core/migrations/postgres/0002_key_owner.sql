-- The person or service a key belongs to (shown to access rules as key.owner).
ALTER TABLE api_keys ADD COLUMN owner TEXT;
