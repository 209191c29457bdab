-- Events become a table range-partitioned by occurred_at (issue 15), so old
-- days can be dropped whole instead of deleted row by row.
--
-- PostgreSQL cannot enforce a unique event_id across partitions, and a
-- retried event may carry another occurred_at (ingest stamps the receipt
-- time when the client leaves it empty), so uniqueness moves to event_ids,
-- written in the same statement as the row: its ON CONFLICT decides whether
-- the event row is inserted. GetEvent reads occurred_at there to reach the
-- one partition that holds the row.
--
-- In place: the rows already stored stay where they are. The old table
-- becomes the partition events_legacy, covering everything before the day
-- after its newest event; partitions of `width` follow from there (created
-- ahead by tributary-ctl migrate and admin's maintenance loop), and a
-- default partition takes any row no range partition covers, so no insert
-- ever fails for want of a partition. An empty old table is simply replaced.
--
-- Cost on a deployment with rows: writers (the processor) wait from the
-- first statement to the end: one pass to fill event_ids and one to check
-- the legacy partition's bound. Readers wait only for the second pass and
-- the renames. Measured in docs/upgrading.md.
LOCK TABLE events IN SHARE MODE;

CREATE TABLE event_ids (
    event_id    text        PRIMARY KEY,
    occurred_at timestamptz NOT NULL
);
-- Retention trims event_ids with its partitions, oldest first.
CREATE INDEX event_ids_by_time ON event_ids (occurred_at);
INSERT INTO event_ids (event_id, occurred_at) SELECT event_id, occurred_at FROM events;

-- The width of new partitions (tributary-ctl migrate --partition-width).
-- Changing it only affects partitions created afterwards: each new one
-- starts where the newest ends.
CREATE TABLE event_partitioning (
    singleton boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    width     interval NOT NULL DEFAULT '1 day'
        CHECK (width >= interval '1 hour' AND width <= interval '31 days')
);
INSERT INTO event_partitioning DEFAULT VALUES;

ALTER TABLE events RENAME TO events_legacy;
ALTER INDEX events_pkey RENAME TO events_legacy_pkey;
ALTER INDEX events_by_time RENAME TO events_legacy_by_time;
ALTER INDEX events_by_type RENAME TO events_legacy_by_type;
ALTER INDEX events_by_source RENAME TO events_legacy_by_source;
ALTER INDEX events_by_user RENAME TO events_legacy_by_user;
ALTER INDEX events_by_session RENAME TO events_legacy_by_session;
ALTER INDEX events_by_payload RENAME TO events_legacy_by_payload;
ALTER INDEX events_by_position RENAME TO events_legacy_by_position;
ALTER INDEX events_by_partition_received RENAME TO events_legacy_by_partition_received;

CREATE TABLE events (
    event_id        text        NOT NULL,
    event_type      text        NOT NULL,
    source          text        NOT NULL DEFAULT '',
    user_id         text        NOT NULL DEFAULT '',
    session_id      text        NOT NULL DEFAULT '',
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    persisted_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    payload         jsonb       NOT NULL DEFAULT '{}',
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    trace_id        text        NOT NULL DEFAULT '',
    schema_version  integer     NOT NULL DEFAULT 0
) PARTITION BY RANGE (occurred_at);

-- The same indexes as before, on every partition. (occurred_at, event_id)
-- also serves GetEvent's lookup inside the one partition it reaches.
CREATE INDEX events_by_time    ON events (occurred_at DESC, event_id DESC);
CREATE INDEX events_by_type    ON events (event_type, occurred_at DESC, event_id DESC);
CREATE INDEX events_by_source  ON events (source, occurred_at DESC, event_id DESC);
CREATE INDEX events_by_user    ON events (user_id, occurred_at DESC, event_id DESC);
CREATE INDEX events_by_session ON events (session_id, occurred_at DESC, event_id DESC);
CREATE INDEX events_by_payload ON events USING gin (payload jsonb_path_ops)
    WITH (fastupdate = on, gin_pending_list_limit = 1024);
CREATE INDEX events_by_position ON events (kafka_partition, kafka_offset);
CREATE INDEX events_by_partition_received ON events (kafka_partition, received_at, kafka_offset);

DO $$
DECLARE
    newest timestamptz;
    bound  timestamptz;
BEGIN
    SELECT max(occurred_at) INTO newest FROM events_legacy;
    IF newest IS NULL THEN
        DROP TABLE events_legacy;
    ELSE
        -- The start of the UTC day after the newest row.
        bound := date_bin('1 day', newest, timestamptz '2000-01-01 00:00:00+00') + interval '1 day';
        -- A valid CHECK lets ATTACH skip its own scan; the old indexes match
        -- the new ones and are attached, not built again.
        EXECUTE format('ALTER TABLE events_legacy ADD CONSTRAINT events_legacy_bound CHECK (occurred_at < %L)', bound);
        EXECUTE format('ALTER TABLE events ATTACH PARTITION events_legacy FOR VALUES FROM (MINVALUE) TO (%L)', bound);
    END IF;
END
$$;

CREATE TABLE events_default PARTITION OF events DEFAULT;

-- Creates the range partition [from_at, to_at) named `name`, first moving
-- into it the rows the default partition holds for that range (backfills,
-- replays of old events): PostgreSQL refuses a partition over rows the
-- default partition already has. Attaching (rather than CREATE TABLE ...
-- PARTITION OF) takes a weaker lock on events: queries and inserts go on.
CREATE FUNCTION tributary_create_event_partition(name text, from_at timestamptz, to_at timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    moved bigint;
BEGIN
    EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS)', name);
    EXECUTE format(
        'WITH gone AS (DELETE FROM events_default WHERE occurred_at >= %L AND occurred_at < %L RETURNING *)
         INSERT INTO %I SELECT * FROM gone', from_at, to_at, name);
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK (occurred_at >= %L AND occurred_at < %L)',
                   name, name || '_bound', from_at, to_at);
    EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, from_at, to_at);
    RETURN moved;
END
$$;
