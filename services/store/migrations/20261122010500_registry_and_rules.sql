-- Event-type registry: every version of each type's payload JSON Schema.
CREATE TABLE event_types (
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    schema      jsonb       NOT NULL,
    description text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Ingest keeps the latest schemas cached and refreshes a type when told.
CREATE FUNCTION tributary_event_type_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tributary_event_types', NEW.name);
    RETURN NEW;
END;
$$;
CREATE TRIGGER event_types_changed AFTER INSERT ON event_types
    FOR EACH ROW EXECUTE FUNCTION tributary_event_type_changed();

-- Threshold rules evaluated by the processor on each persisted event.
CREATE TABLE alert_rules (
    rule_id     text        PRIMARY KEY,
    name        text        NOT NULL,
    event_type  text        NOT NULL,
    path        text[]      NOT NULL,
    pointer     text        NOT NULL,
    comparator  text        NOT NULL CHECK (comparator IN ('GT', 'GTE', 'LT', 'LTE', 'EQ', 'NE')),
    threshold   jsonb       NOT NULL,
    webhook_url text        NOT NULL DEFAULT '',
    description text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX alert_rules_live ON alert_rules (event_type) WHERE deleted_at IS NULL;

-- One alert per rule and event, however often the event is redelivered.
CREATE TABLE alerts (
    alert_id       bigserial   PRIMARY KEY,
    rule_id        text        NOT NULL REFERENCES alert_rules (rule_id),
    event_id       text        NOT NULL,
    event_type     text        NOT NULL,
    observed       jsonb       NOT NULL,
    triggered_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    webhook_status text        NOT NULL DEFAULT 'none',
    UNIQUE (rule_id, event_id)
);
CREATE INDEX alerts_by_time ON alerts (triggered_at DESC, alert_id DESC);
