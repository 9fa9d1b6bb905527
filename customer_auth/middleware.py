"""The Kong plugin's verification inside a Python service: WSGI (PEP 3333) and ASGI 3 middleware.

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, exempt=["/health"])        # Flask
    application = WSGIMiddleware(get_wsgi_application())                    # Django
    app.add_middleware(ASGIMiddleware, exempt=["/docs"])                    # FastAPI, Starlette

Options are the plugin's config fields (customer_auth/schema.py, same defaults) plus ``exempt``:
path prefixes, and/or callables taking the path, for routes that stay open. The database comes
from the environment as for the plugin (``DATABASE_URL``...). Each verifies v1 and RFC 9421
signatures with the plugin's rules, statuses and JSON messages; on success the app finds the
customer's id in ``environ["customer_verification.customer_id"]`` (WSGI) or
``scope["state"]["customer_id"]`` (ASGI: ``request.state.customer_id``). A client-sent
``X-Customer-Id`` (the ``customer_id_header``) is removed before the app runs, verified or not.

No framework is needed: these are plain WSGI and ASGI callables. One credential store, cache and
change listener serve every thread of a process; a process forked from another builds its own.
"""
import asyncio
import http
import io
import json
import logging
import os
import urllib.parse

from customer_auth import metrics, schema
from customer_auth.credentials import Credentials
from customer_auth.verification import BodyIncomplete, BodyTooLarge, Rejection, Verifier, internal_error

log = logging.getLogger("customer_verification")

CUSTOMER_ID_KEY = "customer_verification.customer_id"  # in the WSGI environ
_SAFE_IN_PATH = "/:@!$&'()*+,;=~-._"


class _Verification:
    """Options, exempt routes and, per process, the verifier over the process's credential cache."""

    def __init__(self, options):
        exempt = options.pop("exempt", ())
        unknown = set(options) - set(schema.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        self.config = schema.with_defaults(options)
        self.customer_id_header = self.config["customer_id_header"].lower()
        self._prefixes = tuple(rule for rule in exempt if isinstance(rule, str))
        self._predicates = tuple(rule for rule in exempt if callable(rule))
        self._pid = None

    def exempt(self, path):
        return path.startswith(self._prefixes) or any(predicate(path) for predicate in self._predicates)

    def verifiers(self):
        """``(verifier, memory_verifier)`` for this process, built in the process that serves,
        never inherited; the second has the same rules but answers only from the cache (a miss
        raises StoreNeeded)."""
        if self._pid != os.getpid():
            config = self.config
            cache = Credentials.shared().cache(config["cache_ttl"], config["negative_cache_ttl"],
                                               config["stale_ttl"], config["cache_size"])
            self._verifiers = Verifier(config, cache), Verifier(config, _MemoryOnly(cache))
            self._pid = os.getpid()
        return self._verifiers

    @staticmethod
    def rejected(rejection):
        rejection.log()
        metrics.REQUESTS_BY_OUTCOME[rejection.outcome].inc()
        body = json.dumps({"message": rejection.message}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                   *rejection.headers.items()]
        return f"{rejection.status} {http.HTTPStatus(rejection.status).phrase}", headers, body


class StoreNeeded(Exception):
    """The credential is not in memory: asking the store would block."""


class _MemoryOnly:
    def __init__(self, cache):
        self._cache = cache
        self.verified = cache.verified

    def get(self, certificate_id):
        hit, credential = self._cache.cached(certificate_id)
        if not hit:
            raise StoreNeeded()
        return credential


def _decide(verifier, request):
    """The customer, or the answer ``(status line, headers, body)`` for a rejection."""
    try:
        customer = verifier.authenticate(request)
    except Rejection as rejection:
        return None, _Verification.rejected(rejection)
    except StoreNeeded:
        raise
    except Exception as error:
        log.exception("unexpected %s while verifying a request", type(error).__name__)
        return None, _Verification.rejected(internal_error())
    metrics.REQUESTS_BY_OUTCOME["verified"].inc()
    return customer, None


# -- WSGI --------------------------------------------------------------------------------------

class _WSGIRequest:
    def __init__(self, environ):
        self.environ = environ
        self.headers = {key[5:].replace("_", "-").lower(): [value] for key, value in environ.items()
                        if key.startswith("HTTP_")}
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                self.headers[key.replace("_", "-").lower()] = [environ[key]]

    def method(self):
        return self.environ["REQUEST_METHOD"]

    def target(self):
        """The raw target where the server gives it (gunicorn: RAW_URI, uWSGI: REQUEST_URI);
        else rebuilt from PEP 3333's decoded PATH_INFO, percent-encoding what must be."""
        raw = self.environ.get("RAW_URI") or self.environ.get("REQUEST_URI")
        if raw:
            return raw
        path = urllib.parse.quote(self.environ.get("SCRIPT_NAME", "") + self.environ.get("PATH_INFO", ""),
                                  safe=_SAFE_IN_PATH, encoding="latin-1")
        query = self.environ.get("QUERY_STRING", "")
        return f"{path}?{query}" if query else path

    def scheme(self):
        return self.environ["wsgi.url_scheme"]

    def body(self, limit):
        """Reads the body (declared or chunked) up to ``limit``, and hands the app a fresh input."""
        length = self.environ.get("CONTENT_LENGTH", "")
        stream = self.environ["wsgi.input"]
        try:
            if length.isdigit():
                if int(length) > limit:
                    raise BodyTooLarge()
                chunks, missing = [], int(length)
                while missing:
                    chunk = stream.read(missing)
                    if not chunk:
                        raise BodyIncomplete()
                    chunks.append(chunk)
                    missing -= len(chunk)
                body = b"".join(chunks)
            else:
                body = stream.read(limit + 1)
                if len(body) > limit:
                    raise BodyTooLarge()
        except (BodyTooLarge, BodyIncomplete):
            raise
        except Exception:  # the server's own error for a connection that ended mid-body
            raise BodyIncomplete() from None
        self.environ["wsgi.input"] = io.BytesIO(body)
        self.environ["CONTENT_LENGTH"] = str(len(body))
        self.environ.pop("HTTP_TRANSFER_ENCODING", None)
        return body


class WSGIMiddleware:
    """Verifies every request before ``app`` (a PEP 3333 application) runs; see the module."""

    def __init__(self, app, **options):
        self.app = app
        self._verification = _Verification(options)

    def __call__(self, environ, start_response):
        verification = self._verification
        environ.pop("HTTP_" + verification.customer_id_header.upper().replace("-", "_"), None)
        if verification.exempt(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        customer, answer = _decide(verification.verifiers()[0], _WSGIRequest(environ))
        if answer is not None:
            status, headers, body = answer
            start_response(status, headers)
            return [body]
        environ[CUSTOMER_ID_KEY] = customer.customer_id
        return self.app(environ, start_response)


# -- ASGI --------------------------------------------------------------------------------------

class _ASGIRequest:
    def __init__(self, scope, body):
        self.scope = scope
        self.headers = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        self._body = body

    def method(self):
        return self.scope["method"]

    def target(self):
        raw = self.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else urllib.parse.quote(self.scope["path"], safe=_SAFE_IN_PATH)
        query = self.scope.get("query_string", b"").decode("latin-1")
        return f"{path}?{query}" if query else path

    def scheme(self):
        return self.scope.get("scheme", "http")

    def body(self, limit):
        if isinstance(self._body, Exception):
            raise self._body
        return self._body


class ASGIMiddleware:
    """Verifies every HTTP request before ``app`` (an ASGI 3 application) runs; websocket and
    lifespan scopes pass through untouched. A cache hit is answered on the event loop; a lookup
    in the store runs off it. See the module."""

    def __init__(self, app, **options):
        self.app = app
        self._verification = _Verification(options)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        verification = self._verification
        forged = verification.customer_id_header.encode("latin-1")
        scope = dict(scope, headers=[(name, value) for name, value in scope["headers"] if name.lower() != forged])
        if verification.exempt(scope["path"]):
            return await self.app(scope, receive, send)
        body, messages = None, []
        if _covers_a_body_digest(scope):
            body, messages = await _read_body(receive, verification.config["max_body_size"])
        request = _ASGIRequest(scope, body)
        verifier, memory_verifier = verification.verifiers()
        try:
            customer, answer = _decide(memory_verifier, request)
        except StoreNeeded:
            customer, answer = await asyncio.get_running_loop().run_in_executor(None, _decide, verifier, request)
        if answer is not None:
            status, headers, payload = answer
            await send({"type": "http.response.start", "status": int(status.split()[0]),
                        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]})
            await send({"type": "http.response.body", "body": payload})
            return
        scope.setdefault("state", {})["customer_id"] = customer.customer_id
        await self.app(scope, _replay(messages, receive) if messages else receive, send)


def _covers_a_body_digest(scope):
    """Whether verification will need the body: a body, and a Signature-Input naming the digest
    (a component name is a plain string there, so the name appears as written)."""
    headers = dict(scope["headers"])
    has_body = headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers
    return has_body and b"content-digest" in headers.get(b"signature-input", b"")


async def _read_body(receive, limit):
    """``(body or the exception the verifier raises for it, messages to replay to the app)``."""
    messages, size = [], 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] == "http.disconnect":
            return BodyIncomplete(), messages
        size += len(message.get("body", b""))
        if size > limit:
            return BodyTooLarge(), messages
        if not message.get("more_body"):
            return b"".join(m.get("body", b"") for m in messages), messages


def _replay(messages, receive):
    pending = list(messages)

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed
