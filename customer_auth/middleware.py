"""The Kong plugin's verification inside a Python service: WSGI (PEP 3333) and ASGI 3 middleware.

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, exempt=["/health"])        # Flask
    application = WSGIMiddleware(get_wsgi_application())                    # Django
    app.add_middleware(ASGIMiddleware, exempt=["/docs"])                    # FastAPI, Starlette

Options are the plugin's config fields (customer_auth/core/options.py, same defaults) plus
``exempt``: path prefixes (each covers itself and what lies under it: ``/health`` covers
``/health`` and ``/health/live``, never ``/healthcare``), and/or callables taking the path, for
routes that stay open. The database comes from the environment as for the plugin
(``DATABASE_URL``...). Each hands the core the request as its server passes it on (every header
line, the body it reads): a request gets the plugin's answer. The app finds the customer's id in
``environ["customer_verification.customer_id"]`` (WSGI) or ``scope["state"]["customer_id"]``
(ASGI); a client-sent ``X-Customer-Id`` (``customer_id_header``) is removed, verified or not. An
ASGI websocket handshake is verified as the GET it is, and refused before it is accepted.

Plain WSGI and ASGI callables: one credential store, cache and change listener serve every
thread of a process; a process forked from another builds its own.
"""

from customer_auth.service.asgi import ASGIMiddleware
from customer_auth.service.wsgi import CUSTOMER_ID_KEY, WSGIMiddleware

__all__ = ["ASGIMiddleware", "CUSTOMER_ID_KEY", "WSGIMiddleware"]
