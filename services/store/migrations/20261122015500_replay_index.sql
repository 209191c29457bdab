-- ResetOffsets to a timestamp asks, per partition, for the first stored
-- offset received at or after it: served here instead of by a full scan.
CREATE INDEX events_by_partition_received ON events (kafka_partition, received_at, kafka_offset);
