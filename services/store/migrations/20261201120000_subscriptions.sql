-- Subscriptions: named, durable cursors over tributary.events (consumer group
-- tributary.sub.<name>) with a filter, delivered by webhook (dispatch) or
-- pulled. `spec` holds the settings (filter, delivery, batch, retry, rate)
-- as the protobuf encoding of tributary.v1.Subscription, read-only fields
-- cleared: admin writes it, dispatch reads it, both from the same contract.
CREATE TABLE subscriptions (
    name              text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9._-]{0,63}$'),
    spec              bytea       NOT NULL,
    paused            boolean     NOT NULL DEFAULT false,
    -- active, failing or disabled (paused is its own column, set by people).
    state             text        NOT NULL DEFAULT 'active'
                                  CHECK (state IN ('active', 'failing', 'disabled')),
    -- Signing secrets (whsec_...), the newest first. dispatch needs them to
    -- sign, so unlike API keys they cannot be stored hashed.
    secrets           text[]      NOT NULL DEFAULT '{}',
    -- The older secrets sign too until then.
    old_secrets_until timestamptz,
    -- Raised by every change an operator makes; dispatch reloads on it.
    generation        bigint      NOT NULL DEFAULT 1,
    last_delivered_at timestamptz,
    last_error        text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
