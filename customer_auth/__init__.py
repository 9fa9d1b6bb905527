"""The runtime of customer_verification, apart from its Kong contract
(``customer_verification.py``).

- ``plugin_server``: the lean transport: Kong's MessagePack-RPC on the plugin server's socket;
- ``events``: a plugin event's greenlet, and the ``kong`` object its PDK calls go through;
- ``signature``: the v1 request signature, pure (clients import it without Kong or a database);
- ``message_signatures``: HTTP Message Signatures (RFC 9421) as the plugin accepts them, pure;
- ``verification``: the one decision over a request view, with every rule, status and message;
- ``connection``: connection settings from the environment, bounded connections, the pool;
- ``lookup``: a customer's credential read from Postgres (a standby when one is up to date);
- ``replication``: how far a hot standby must have replayed before its answer counts;
- ``cache``: credentials and recently verified requests kept in memory;
- ``changes``: the LISTEN/NOTIFY listener that evicts what changed;
- ``nonces``: RFC 9421 nonces claimed once across the cluster (replay protection);
- ``credentials``: the process's store, caches, listener and nonces, shared by every plugin
  instance;
- ``consumers``: Kong consumers of verified customers, remembered;
- ``client``: signing requests as a client (RFC 9421 through the reference library, or v1);
- ``metrics``: Prometheus metrics, and the listener serving them with /health;
- ``operator_log``: problems carried into Kong's error log at a level Kong keeps;
- ``middleware``: WSGI and ASGI middleware (``wsgi``, ``asgi``) over ``service_verification``;
- ``admin``: the operator's ``customer-verification`` command.

Imports run one way: the plugin -> verification, credentials -> cache, nonces -> lookup, changes ->
connection -> metrics, replication (tests/test_layout.py holds them to it).
"""
