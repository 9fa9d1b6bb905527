-- The deployment's plugin login role and its demo customer (psql: -v plugin_user, plugin_password).
CREATE ROLE :"plugin_user" LOGIN PASSWORD :'plugin_password' IN ROLE customer_reader, customer_nonce_claimer;

-- The demo customer's key is public (it is in this file, and docs/getting-started.md uses it):
-- revoke it before any real use with
--   customer-verification revoke demo-certificate
INSERT INTO customer (uuid, certificate, authentication)
VALUES ('6f1d8d2e-3b1a-4c52-9a57-0d7e2f6b9c41', 'demo-certificate', '{"client_key": "demo-client-key"}')
ON CONFLICT DO NOTHING;

-- A second demo customer, so the demo's per-customer rate limit shows one customer limited while
-- the other passes. Its key is public too.
INSERT INTO customer (uuid, certificate, authentication)
VALUES ('0b9f7c3e-5d2a-4e8b-8f61-2c4d6e8a0b13', 'demo-certificate-2', '{"client_key": "demo-client-key-2"}')
ON CONFLICT DO NOTHING;
