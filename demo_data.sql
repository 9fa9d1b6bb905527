-- The deployment's plugin login role and its demo customer (psql: -v plugin_user, plugin_password).
CREATE ROLE :"plugin_user" LOGIN PASSWORD :'plugin_password' IN ROLE customer_reader;

-- The demo customer's key is public (README): revoke it before any real use with
--   customer-verification revoke demo-certificate
INSERT INTO customer (uuid, certificate, authentication)
VALUES ('6f1d8d2e-3b1a-4c52-9a57-0d7e2f6b9c41', 'demo-certificate', '{"client_key": "demo-client-key"}')
ON CONFLICT DO NOTHING;
