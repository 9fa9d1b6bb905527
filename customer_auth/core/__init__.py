"""The rules: the v1 and RFC 9421 signatures, the options, the decision and its domain types.
Pure: no database driver, gevent, kong_pdk or prometheus_client (tests/unit/test_core.py)."""
