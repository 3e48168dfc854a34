-- The routing trace of a call: target, script, candidate order, exclusions and every attempt.
ALTER TABLE usage_records ADD COLUMN route TEXT;
