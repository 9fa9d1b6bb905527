"""A Flask service that serves signed requests only (run: gunicorn flask_service:app).

Needs: pip install 'customer-verification[middleware]' flask gunicorn, and DATABASE_URL naming
the customers database with a role that may read the table `customer`.
"""

from flask import Flask, request

from customer_auth.middleware import CUSTOMER_ID_KEY, WSGIMiddleware

app = Flask(__name__)


@app.post("/echo")
def echo() -> dict[str, object]:
    return {"customer_id": request.environ[CUSTOMER_ID_KEY], "order": request.get_json()}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "up"}


# Every request but /health must be signed; the rest of the app never sees one that is not.
app.wsgi_app = WSGIMiddleware(app.wsgi_app, exempt=["/health"])
