-- TailEvents reads the rows of a committed batch by their Kafka position.
CREATE INDEX events_by_position ON events (kafka_partition, kafka_offset);

-- A timestamp inside a payload, or NULL when it is absent or not one: lets
-- AggregateEvents bucket by a payload timestamp without one bad row failing
-- the whole statement.
CREATE FUNCTION tributary_try_timestamptz(value text) RETURNS timestamptz
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN value::timestamptz;
EXCEPTION WHEN others THEN
    RETURN NULL;
END;
$$;
