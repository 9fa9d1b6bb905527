"""The service face: WSGI and ASGI middleware over the same decision (customer_auth.middleware
is where users import them from)."""
