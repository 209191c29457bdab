-- Retention (issue 15): partitions of events past the cutoff are detached
-- and dropped whole; what ages row by row is deleted in bounded batches,
-- oldest first, through these indexes (events_default and events_legacy
-- have events_by_time).
CREATE INDEX dead_letters_by_age ON dead_letters (first_seen_at);
CREATE INDEX alerts_by_age ON alerts (triggered_at);

-- Detaches and drops one range partition of events (never the default).
-- The name comes from the catalog; format(%I) quotes it all the same.
CREATE FUNCTION tributary_drop_event_partition(name text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'events'::regclass AND c.relname = name
           AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
    ) THEN
        RAISE EXCEPTION 'no range partition of events is named %', name;
    END IF;
    EXECUTE format('ALTER TABLE events DETACH PARTITION %I', name);
    EXECUTE format('DROP TABLE %I', name);
END
$$;
