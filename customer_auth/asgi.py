"""Where users import the ASGI middleware from (documented); it lives in customer_auth/service."""

from customer_auth.service.asgi import ASGIMiddleware

__all__ = ["ASGIMiddleware"]
