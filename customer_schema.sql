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
