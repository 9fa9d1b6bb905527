-- The credential store of customer_verification: the one place that defines the table, its
-- indexes, the change trigger and the plugin's read-only role. Safe to run again, and safe on
-- the pre-existing table customer(uuid, certificate, authentication), whose rows keep working.
--
-- authentication holds {"client_key": ...}; during a key rotation also
-- {"previous_client_key": ..., "previous_key_expires_at": <epoch seconds>}; a revoked
-- customer has {"revoked_at": <epoch seconds>}.

CREATE TABLE IF NOT EXISTS customer (
    uuid           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    certificate    text NOT NULL,
    authentication jsonb NOT NULL
);

-- One customer per certificate: the plugin refuses a certificate that matches two rows.
CREATE UNIQUE INDEX IF NOT EXISTS customer_certificate_key ON customer (certificate);

-- Running plugin servers LISTEN on customer_changed and evict the certificate named in the
-- payload, so a revocation or a new key is seen within a second, for changes made by any SQL.
-- An empty payload means "evict everything" (TRUNCATE, or a certificate too long for a payload).
CREATE OR REPLACE FUNCTION customer_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_LEVEL = 'STATEMENT' THEN
        PERFORM pg_notify('customer_changed', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('customer_changed',
                          CASE WHEN octet_length(OLD.certificate) <= 1000 THEN OLD.certificate ELSE '' END);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('customer_changed',
                          CASE WHEN octet_length(NEW.certificate) <= 1000 THEN NEW.certificate ELSE '' END);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS customer_changed ON customer;
CREATE TRIGGER customer_changed AFTER INSERT OR UPDATE OR DELETE ON customer
    FOR EACH ROW EXECUTE FUNCTION customer_notify_change();

DROP TRIGGER IF EXISTS customer_truncated ON customer;
CREATE TRIGGER customer_truncated AFTER TRUNCATE ON customer
    FOR EACH STATEMENT EXECUTE FUNCTION customer_notify_change();

-- The plugin reads and nothing else. A login role for it is made member of this one
-- (see the deployment's init script), so no password lives in this file.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'customer_reader') THEN
        CREATE ROLE customer_reader NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON customer FROM customer_reader;
GRANT SELECT ON customer TO customer_reader;

-- Replay protection (the route option replay_protection): each RFC 9421 nonce is claimed once
-- per certificate while its signature may be fresh, whichever node the request reaches.
-- UNLOGGED: not written to the WAL, so claims cost no replication and no fsync, but the table
-- is emptied when the primary crashes (and is not on a standby that takes over): nonces claimed
-- less than one clock window before that may be accepted once more.
CREATE UNLOGGED TABLE IF NOT EXISTS customer_nonce (
    certificate text NOT NULL,
    nonce       text NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (certificate, nonce)
);
CREATE INDEX IF NOT EXISTS customer_nonce_expires_at ON customer_nonce (expires_at);
-- Who claimed it: a token the claim sends, so that a claim sent again after its answer was lost
-- (a connection that died after the commit) finds its own row instead of a replay.
ALTER TABLE customer_nonce ADD COLUMN IF NOT EXISTS claimed_by text;

-- One statement per protected request: true when this is the nonce's first use (or its earlier
-- use has expired) or the row is this very claim's (claim_token: sent again after a lost answer),
-- false for a replay. Each claim also removes two expired rows, skipping any another claim holds,
-- so the table stays near (claims per second) x (window) without a cron.
CREATE OR REPLACE FUNCTION customer_nonce_claim(claimed_certificate text, claimed_nonce text,
                                                claimed_until double precision,
                                                claim_token text) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH expired AS (
        DELETE FROM customer_nonce
         WHERE ctid IN (SELECT ctid FROM customer_nonce
                         WHERE expires_at < now()
                           AND (certificate, nonce) <> (claimed_certificate, claimed_nonce)
                         ORDER BY expires_at LIMIT 2 FOR UPDATE SKIP LOCKED)
    ), claim AS (
        INSERT INTO customer_nonce AS held
        VALUES (claimed_certificate, claimed_nonce, to_timestamp(claimed_until), claim_token)
        ON CONFLICT (certificate, nonce) DO UPDATE
           SET expires_at = EXCLUDED.expires_at, claimed_by = EXCLUDED.claimed_by
         WHERE held.expires_at < now()
        RETURNING true
    )
    SELECT EXISTS (SELECT FROM claim)
        OR EXISTS (SELECT FROM customer_nonce
                    WHERE (certificate, nonce) = (claimed_certificate, claimed_nonce)
                      AND claimed_by = claim_token)
$$;

-- The plugin may claim nonces and do nothing else with them: no reading, no deleting. Its login
-- role is made member of this one too (see the deployment's init script).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'customer_nonce_claimer') THEN
        CREATE ROLE customer_nonce_claimer NOLOGIN;
    END IF;
END
$$;
REVOKE ALL ON customer_nonce FROM PUBLIC, customer_nonce_claimer, customer_reader;
REVOKE ALL ON FUNCTION customer_nonce_claim(text, text, double precision, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION customer_nonce_claim(text, text, double precision, text)
    TO customer_nonce_claimer;
