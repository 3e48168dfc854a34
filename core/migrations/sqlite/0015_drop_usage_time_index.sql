-- No query reads usage records by completion time alone (the usage API filters on
-- received_at_ms, which has its own index, and on key_id): the index only cost every insert.
DROP INDEX IF EXISTS usage_records_time;
