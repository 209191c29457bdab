-- API keys. A key is `trb_<key_id>_<secret>` (publishable keys, for web
-- pages: `trb_pub_<key_id>_<secret>`); only the SHA-256 of the secret is
-- stored, and the secret is shown once, when the key is created.
CREATE TABLE api_keys (
    key_id          text        PRIMARY KEY CHECK (key_id ~ '^[a-z0-9]{12}$'),
    name            text        NOT NULL,
    publishable     boolean     NOT NULL DEFAULT false,
    secret_sha256   bytea       NOT NULL CHECK (length(secret_sha256) = 32),
    scopes          text[]      NOT NULL,
    allowed_origins text[]      NOT NULL DEFAULT '{}',
    -- 0: the scope's default rate (the services' --rate-limit).
    rate_per_second integer     NOT NULL DEFAULT 0 CHECK (rate_per_second >= 0),
    rate_burst      integer     NOT NULL DEFAULT 0 CHECK (rate_burst >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    revoked_at      timestamptz,
    -- Written by the services now and then, not per call.
    last_used_at    timestamptz
);
CREATE INDEX api_keys_by_creation ON api_keys (created_at, key_id);

-- Every service caches keys and drops or reloads one when told: a
-- revocation reaches every replica at once. last_used_at does not notify.
CREATE FUNCTION tributary_api_key_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tributary_api_keys', NEW.key_id);
    RETURN NEW;
END;
$$;
CREATE TRIGGER api_keys_changed
    AFTER INSERT OR UPDATE OF name, publishable, secret_sha256, scopes, allowed_origins,
        rate_per_second, rate_burst, expires_at, revoked_at
    ON api_keys FOR EACH ROW EXECUTE FUNCTION tributary_api_key_changed();
