"""The runtime of customer_verification, apart from its Kong contract
(``customer_verification.py``), in folders by role:

- ``core``: the rules, pure: the v1 and RFC 9421 signatures, the options (the schema), the one
  decision (``decision.py``, sans-IO) and what it needs (``needs.py``), the domain types;
- ``store``: Postgres: settings and pools, the customer table (read and written in
  ``customers.py``), the caches, the change listener, replay protection's nonces;
- ``kong``: the Kong face (``plugin.py``), the lean transport and its events, how the process
  starts, the operator log carried into Kong's error log;
- ``service``: the WSGI and ASGI middleware (imported from ``customer_auth.middleware``, or
  ``customer_auth.wsgi`` and ``customer_auth.asgi``);
- ``client``: signing requests as a client; ``cli``: the ``customer-verification`` command;
- ``errors``: everything the package raises, one tree; ``metrics``: Prometheus and /health.

Imports run one way: the faces and the store import the core, never the other way
(tests/system/test_layout.py holds them to it).
"""
