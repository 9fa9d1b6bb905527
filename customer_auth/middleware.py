"""The Kong plugin's verification inside a Python service: WSGI (PEP 3333) and ASGI 3 middleware.

    app.wsgi_app = WSGIMiddleware(app.wsgi_app, exempt=["/health"])        # Flask
    application = WSGIMiddleware(get_wsgi_application())                    # Django
    app.add_middleware(ASGIMiddleware, exempt=["/docs"])                    # FastAPI, Starlette

Options are the plugin's config fields (customer_auth/schema.py, same defaults) plus ``exempt``:
path prefixes (each covers itself and what lies under it: ``/health`` covers ``/health`` and
``/health/live``, never ``/healthcare``), and/or callables taking the path, for routes that stay
open. The database comes from the environment as for the plugin (``DATABASE_URL``...). Each
hands the core the request as its server passes it on (every header line, the body it reads):
a request gets the plugin's answer. The app finds the customer's id in
``environ["customer_verification.customer_id"]`` (WSGI) or ``scope["state"]["customer_id"]``
(ASGI); a client-sent ``X-Customer-Id`` (``customer_id_header``) is removed, verified or not. An
ASGI websocket handshake is verified as the GET it is, and refused before it is accepted.

Plain WSGI and ASGI callables: one credential store, cache and change listener serve every
thread of a process; a process forked from another builds its own.
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
        return any(_under(path, rule) for rule in self._prefixes) or any(rule(path) for rule in self._predicates)

    def verifiers(self):
        """``(verifier, memory_verifier)`` of this process (never inherited); the second answers
        only from the cache (a miss raises StoreNeeded)."""
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


def _under(path, prefix):
    """Whether ``prefix`` covers ``path``: the prefix itself or a path below it, segment-wise."""
    if "/./" in path + "/" or "/../" in path + "/":
        return False  # a dot segment may lead the app's router out from under the prefix
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


class StoreNeeded(Exception):
    """The credential is not in memory: asking the store would block."""


class BodyNeeded(Exception):
    """The verifier asked about a body not yet received (ASGI: receiving is awaited)."""

    def __init__(self, whole):
        self.whole = whole  # all of it, or only enough to tell whether there is one


class _MemoryOnly:
    def __init__(self, cache):  # the cache's interface, answered from memory only
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
    except (StoreNeeded, BodyNeeded):
        raise
    except Exception as error:
        log.exception("unexpected %s while verifying a request", type(error).__name__)
        return None, _Verification.rejected(internal_error())
    metrics.REQUESTS_BY_OUTCOME["verified"].inc()
    return customer, None


# -- WSGI --------------------------------------------------------------------------------------

class _WSGIRequest:
    """A header sent twice arrives joined with a comma (gunicorn, wsgiref): RFC 9110's join."""

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

    def has_body(self):
        """What the app would read: a server that frames the input (``wsgi.input_terminated``:
        gunicorn, werkzeug) is asked for a byte, kept for the app; else CONTENT_LENGTH's number."""
        if self.environ.get("wsgi.input_terminated"):
            stream = self.environ["wsgi.input"]
            try:
                first = stream.read(1)
            except Exception:  # the server's own error for a connection that ended
                return True
            if first:
                self.environ["wsgi.input"] = io.BufferedReader(_Prepended(first, stream))
            return bool(first)
        length = self.environ.get("CONTENT_LENGTH", "").strip()
        return (length.isdigit() and int(length) > 0) or "HTTP_TRANSFER_ENCODING" in self.environ

    def body(self, limit):
        """Reads the body as the server frames it, up to ``limit``; the app gets a fresh input."""
        length = self.environ.get("CONTENT_LENGTH", "").strip()
        declared = int(length) if length.isdigit() else None
        if declared is not None and declared > limit:
            raise BodyTooLarge()
        framed = declared is None or self.environ.get("wsgi.input_terminated")
        wanted, chunks, size = limit + 1 if framed else declared, [], 0
        try:
            while size < wanted:
                chunk = self.environ["wsgi.input"].read(wanted - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except Exception:  # the server's own error for a connection that ended mid-body
            raise BodyIncomplete() from None
        if size > limit:
            raise BodyTooLarge()
        if declared is not None and size < declared:
            raise BodyIncomplete()
        body = b"".join(chunks)
        self.environ["wsgi.input"] = io.BytesIO(body)
        self.environ["CONTENT_LENGTH"] = str(len(body))
        self.environ.pop("HTTP_TRANSFER_ENCODING", None)
        return body


class _Prepended(io.RawIOBase):
    """A WSGI input with the byte already read put back in front (wrapped in a BufferedReader)."""

    def __init__(self, head, stream):
        self._head, self._stream = head, stream

    def readable(self):
        return True

    def readinto(self, buffer):
        data, self._head = self._head or self._stream.read(len(buffer)), b""
        buffer[:len(data)] = data
        return len(data)


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
    """An HTTP request or websocket handshake (a GET, no body), every header line kept; the body
    is received only when the verifier asks about it (BodyNeeded, then ``receive``)."""

    def __init__(self, scope):
        self.scope = scope
        self.headers = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
        self.messages = []  # what was received, to replay to the app
        self._size = 0
        self._ended = scope["type"] == "websocket"  # a handshake has no body
        self._problem = None  # BodyTooLarge or BodyIncomplete, once found

    def method(self):
        return self.scope.get("method", "GET")

    def target(self):
        raw = self.scope.get("raw_path")
        path = raw.decode("latin-1") if raw else urllib.parse.quote(self.scope["path"], safe=_SAFE_IN_PATH)
        query = self.scope.get("query_string", b"").decode("latin-1")
        return f"{path}?{query}" if query else path

    def scheme(self):
        return self.scope.get("scheme", "http")

    def has_body(self):
        if self._size or self._problem:
            return True
        if not self._ended:
            raise BodyNeeded(whole=False)
        return False

    def body(self, limit):
        if not self._ended and not self._problem:
            raise BodyNeeded(whole=True)
        if self._problem:
            raise self._problem
        return b"".join(message.get("body", b"") for message in self.messages)

    async def receive(self, receive, whole, limit):
        """Receives the body (``whole``) or its first message, never more than ``limit`` bytes."""
        while not self._ended and not self._problem:
            message = await receive()
            self.messages.append(message)
            if message["type"] == "http.disconnect":
                self._problem = BodyIncomplete()
                break
            self._size += len(message.get("body", b""))
            if self._size > limit:
                self._problem = BodyTooLarge()
            self._ended = not message.get("more_body")
            if not whole:
                break


class ASGIMiddleware:
    """Verifies every HTTP request and websocket handshake before ``app`` (an ASGI 3 application)
    runs; lifespan scopes pass through. A cache hit is answered on the event loop; a lookup in the
    store runs off it. See the module."""

    def __init__(self, app, **options):
        self.app = app
        self._verification = _Verification(options)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        verification = self._verification
        forged = verification.customer_id_header.encode("latin-1")
        scope = dict(scope, headers=[(name, value) for name, value in scope["headers"] if name.lower() != forged])
        if verification.exempt(scope["path"]):
            return await self.app(scope, receive, send)
        request = _ASGIRequest(scope)
        customer, answer = await self._decide(request, receive)
        if answer is not None:
            return await _refuse(scope, send, *answer)
        scope.setdefault("state", {})["customer_id"] = customer.customer_id
        await self.app(scope, _replay(request.messages, receive) if request.messages else receive, send)

    async def _decide(self, request, receive):
        """The core's decision, asked again when it needs what is not here yet: the body (received
        on the loop) or a credential not in memory (looked up off the loop)."""
        verifier, memory_verifier = self._verification.verifiers()
        limit = self._verification.config["max_body_size"]
        while True:
            try:
                try:
                    return _decide(memory_verifier, request)
                except StoreNeeded:
                    return await asyncio.get_running_loop().run_in_executor(None, _decide, verifier, request)
            except BodyNeeded as needed:
                await request.receive(receive, needed.whole, limit)


async def _refuse(scope, send, status, headers, payload):
    """The rejection as an HTTP answer; a websocket handshake is refused before it is accepted,
    with the answer itself where the server offers ``websocket.http.response``, else a close
    (which the server turns into a 403)."""
    code = int(status.split()[0])
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": code, "headers": encoded})
        await send({"type": "http.response.body", "body": payload})
    elif "websocket.http.response" in scope.get("extensions", {}):
        await send({"type": "websocket.http.response.start", "status": code, "headers": encoded})
        await send({"type": "websocket.http.response.body", "body": payload})
    else:
        await send({"type": "websocket.close", "code": 1008})


def _replay(messages, receive):
    pending = list(messages)

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed
