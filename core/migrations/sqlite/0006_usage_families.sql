-- Endpoint families (issue 9): which API family the client called (openai, anthropic, gemini,
-- vllm, unified) and which the upstream spoke, and the tokens written to the prompt cache
-- (Anthropic cache creation), counted once inside input_tokens and priced on their own.
ALTER TABLE usage_records ADD COLUMN endpoint_family TEXT;
ALTER TABLE usage_records ADD COLUMN upstream_family TEXT;
ALTER TABLE usage_records ADD COLUMN cache_creation_tokens INTEGER NOT NULL DEFAULT 0;
