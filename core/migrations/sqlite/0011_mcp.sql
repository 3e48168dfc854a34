-- MCP Access: the MCP servers (slugs) a key may use, separate from Model Access.
-- JSON array of slugs; ["*"] grants every server; [] (the default) grants none.
ALTER TABLE api_keys ADD COLUMN mcp_servers TEXT NOT NULL DEFAULT '[]';

-- MCP usage: one row per HTTP request on /v1/mcp/..., with provider = 'mcp'.
ALTER TABLE usage_records ADD COLUMN mcp_server TEXT;
ALTER TABLE usage_records ADD COLUMN mcp_transport TEXT;
ALTER TABLE usage_records ADD COLUMN mcp_method TEXT;
ALTER TABLE usage_records ADD COLUMN mcp_tool TEXT;
ALTER TABLE usage_records ADD COLUMN mcp_tool_calls INTEGER;
ALTER TABLE usage_records ADD COLUMN bytes_in INTEGER;
ALTER TABLE usage_records ADD COLUMN bytes_out INTEGER;
ALTER TABLE usage_records ADD COLUMN mcp_pricing TEXT;      -- JSON pricing snapshot

-- The key that signs gateway MCP session ids, shared by every replica on this store so a
-- session started on one replica continues on another. Created by the first gateway to start.
CREATE TABLE mcp_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
