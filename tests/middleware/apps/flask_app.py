"""A Flask app behind WSGIMiddleware (the tests run it under gunicorn, pre-forking)."""

import hashlib
import os

from flask import Flask, jsonify, request

from customer_auth.middleware import CUSTOMER_ID_KEY, WSGIMiddleware

app = Flask(__name__)


@app.route("/whoami")
def whoami():
    return jsonify(
        customer_id=request.environ.get(CUSTOMER_ID_KEY),
        header=request.headers.get("X-Customer-Id"),
        pid=os.getpid(),
    )


@app.route("/echo", methods=["POST"])
def echo():
    body = request.get_data()
    return jsonify(
        customer_id=request.environ.get(CUSTOMER_ID_KEY),
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
    )


@app.route("/health")
def health():
    return jsonify(
        customer_id=request.environ.get(CUSTOMER_ID_KEY),
        header=request.headers.get("X-Customer-Id"),
    )


app.wsgi_app = WSGIMiddleware(
    app.wsgi_app,
    exempt=["/health"],
    max_body_size=4096,
    cache_ttl=3600,
    replay_protection=os.environ.get("REPLAY_PROTECTION") == "1",
)
