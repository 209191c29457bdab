-- Erasure (issue 15): AdminService.EraseUser deletes a user's events, the
-- alerts they raised and the user's dead letters, and leaves a tombstone so
-- the records still in Kafka (a replay, ResetOffsets, a subscription's seek)
-- never bring them back. Nothing here holds the user_id itself: tombstones
-- hold HMAC-SHA256(erasure key, user_id).

-- The key of those hashes: one row, 32 random bytes. The services make it
-- on first use (INSERT ... ON CONFLICT DO NOTHING, then SELECT: every
-- replica ends up with the same key), from the operating system's CSPRNG.
-- Losing it (or changing it) makes every tombstone unrecognisable.
CREATE TABLE erasure_key (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    key        bytea       NOT NULL CHECK (length(key) = 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The audit record: which (hashed) user, when, and what was removed.
CREATE TABLE erasures (
    erasure_id                bigserial   PRIMARY KEY,
    user_hash                 bytea       NOT NULL,
    erased_at                 timestamptz NOT NULL DEFAULT clock_timestamp(),
    events                    bigint      NOT NULL,
    alerts                    bigint      NOT NULL,
    dead_letters              bigint      NOT NULL,
    subscription_dead_letters bigint      NOT NULL
);
CREATE INDEX erasures_by_user ON erasures (user_hash);

-- The tombstone: per topic and partition, the end offset (the offset the
-- next record would get) when the user was erased. The processor and
-- dispatch skip the user's records below it. Erasures take an exclusive
-- advisory lock before they write (see store/src/erasure.rs), so erasure_id
-- order is commit order: dispatch follows this table by erasure_id.
CREATE TABLE erasure_offsets (
    erasure_id      bigint  NOT NULL REFERENCES erasures (erasure_id),
    user_hash       bytea   NOT NULL,
    topic           text    NOT NULL,
    kafka_partition integer NOT NULL,
    end_offset      bigint  NOT NULL,
    PRIMARY KEY (erasure_id, topic, kafka_partition)
);
-- The processor's per-batch check: user_hash = ANY(the batch's hashes).
CREATE INDEX erasure_offsets_by_user ON erasure_offsets (user_hash, topic, kafka_partition, end_offset);

-- Whose dead letter: set on insert when the record decoded far enough to
-- tell ('' for an event without a user). NULL: not known yet (a record that
-- did not decode, or a row from before this column); an erasure decodes
-- those once, in bounded batches, and fills the column ('' when it cannot).
ALTER TABLE dead_letters ADD COLUMN user_id text;
CREATE INDEX dead_letters_by_user ON dead_letters (user_id);

-- An erasure removes the alerts of the events it removes.
CREATE INDEX alerts_by_event ON alerts (event_id);
