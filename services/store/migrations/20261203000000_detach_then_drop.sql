-- Retention detaches a partition in one short transaction and drops it in another, so only the DETACH holds the lock on events.
-- (A DROP commits file removals and a WAL flush, about 13 ms idle on this
-- machine; inside the DETACH's transaction every insert waited for it.)
-- A table left detached by a crash between the two steps is found by its
-- name (events_p...) and dropped by the next run.
DROP FUNCTION tributary_drop_event_partition(text);

-- Detaches one range partition of events (never the default).
CREATE FUNCTION tributary_detach_event_partition(name text)
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
END
$$;

-- Tables named as Tributary names range partitions but attached to
-- nothing: detached by retention and not yet dropped.
CREATE FUNCTION tributary_detached_event_partitions()
RETURNS SETOF text LANGUAGE sql STABLE AS $$
    SELECT c.relname::text
      FROM pg_class c
     WHERE c.relkind = 'r'
       AND c.relnamespace = current_schema()::regnamespace
       AND c.relname ~ '^events_p[0-9]{8}(_[0-9]{4})?$'
       AND NOT c.relispartition
     ORDER BY c.relname
$$;

-- Drops one such detached table (never an attached partition).
CREATE FUNCTION tributary_drop_detached_event_partition(name text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF name NOT IN (SELECT tributary_detached_event_partitions()) THEN
        RAISE EXCEPTION 'no detached partition of events is named %', name;
    END IF;
    EXECUTE format('DROP TABLE %I', name);
END
$$;
