"""Where users import the WSGI middleware from (documented); it lives in customer_auth/service."""

from customer_auth.service.wsgi import CUSTOMER_ID_KEY, WSGIMiddleware

__all__ = ["CUSTOMER_ID_KEY", "WSGIMiddleware"]
