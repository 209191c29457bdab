-- Dead letters of subscriptions (issue 14). A subscription whose batch
-- exhausts its retry policy keeps the batch's records here, under its name;
-- the processor's own letters have subscription ''. One record can be a dead
-- letter of several subscriptions and of the processor at once, so the
-- source record alone no longer identifies a row.
ALTER TABLE dead_letters ADD COLUMN subscription text NOT NULL DEFAULT '';
-- A redrive of a subscription's letter asks dispatch to deliver it again to
-- that subscription (never to the topic); redriven_at is set only after the
-- endpoint answered 2xx. A delivery that fails again clears the request.
ALTER TABLE dead_letters ADD COLUMN redrive_requested_at timestamptz;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_topic_kafka_partition_kafka_offset_key;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_subscription_record_key
    UNIQUE (subscription, topic, kafka_partition, kafka_offset);
-- What dispatch polls for: the letters waiting to be delivered again.
CREATE INDEX dead_letters_redrive_queue ON dead_letters (subscription, id)
    WHERE redrive_requested_at IS NOT NULL AND redriven_at IS NULL;
