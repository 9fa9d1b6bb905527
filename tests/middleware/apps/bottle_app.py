"""A Bottle app behind WSGIMiddleware (the tests run it under gunicorn)."""

import hashlib
import os

import bottle

from customer_auth.middleware import CUSTOMER_ID_KEY, WSGIMiddleware

app = bottle.Bottle()


@app.get("/whoami")
def whoami():
    return {
        "customer_id": bottle.request.environ.get(CUSTOMER_ID_KEY),
        "header": bottle.request.headers.get("X-Customer-Id"),
        "pid": os.getpid(),
    }


@app.post("/echo")
def echo():
    body = bottle.request.body.read()
    return {
        "customer_id": bottle.request.environ.get(CUSTOMER_ID_KEY),
        "size": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


@app.get("/health")
def health():
    return {
        "customer_id": bottle.request.environ.get(CUSTOMER_ID_KEY),
        "header": bottle.request.headers.get("X-Customer-Id"),
    }


application = WSGIMiddleware(app, exempt=["/health"], max_body_size=4096, cache_ttl=3600)
