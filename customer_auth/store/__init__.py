"""Postgres: settings and pools, the customer table, the caches in front of it, the change
listener, replay protection's nonces, and the process's store that holds them together."""
