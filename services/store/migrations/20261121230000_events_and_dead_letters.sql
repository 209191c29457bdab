-- Every event, exactly once: event_id is the idempotency key.
CREATE TABLE events (
    event_id        text        PRIMARY KEY,
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
);

-- ListEvents orders by (occurred_at DESC, event_id DESC) and pages by keyset;
-- each filter has an index that leads with its column and ends with that order.
CREATE INDEX events_by_time    ON events (occurred_at DESC, event_id DESC);
CREATE INDEX events_by_type    ON events (event_type, occurred_at DESC, event_id DESC);
CREATE INDEX events_by_source  ON events (source, occurred_at DESC, event_id DESC);
CREATE INDEX events_by_user    ON events (user_id, occurred_at DESC, event_id DESC);
CREATE INDEX events_by_session ON events (session_id, occurred_at DESC, event_id DESC);
-- Payload equality filters (payload @> '{"a":{"b":1}}').
CREATE INDEX events_by_payload ON events USING gin (payload jsonb_path_ops);

-- Records the processor could not store: the original bytes, why, and where
-- they came from. One row per source record, however often it is redelivered.
CREATE TABLE dead_letters (
    id              bigserial   PRIMARY KEY,
    topic           text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    record_key      bytea,
    record_value    bytea,
    header_keys     text[]      NOT NULL DEFAULT '{}',
    header_values   bytea[]     NOT NULL DEFAULT '{}',
    reason          text        NOT NULL,
    event_id        text,
    event_type      text,
    first_seen_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    redriven_at     timestamptz,
    UNIQUE (topic, kafka_partition, kafka_offset)
);
CREATE INDEX dead_letters_pending ON dead_letters (first_seen_at DESC, id DESC) WHERE redriven_at IS NULL;
