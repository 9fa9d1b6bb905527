"""The verification as ASGI 3 middleware, websockets included; see customer_auth/middleware.py."""

import asyncio
import urllib.parse

from customer_auth.service_verification import (
    SAFE_IN_PATH,
    BodyNeeded,
    StoreNeeded,
    Verification,
    decide,
)
from customer_auth.verification import BodyIncomplete, BodyTooLarge


class _ASGIRequest:
    """An HTTP request or websocket handshake (a GET, no body), every header line kept; the body
    is received only when the verifier asks about it (BodyNeeded, then ``receive``)."""

    def __init__(self, scope):
        self.scope = scope
        self.headers = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(
                value.decode("latin-1")
            )
        self.messages = []  # what was received, to replay to the app
        self._size = 0
        self._ended = scope["type"] == "websocket"  # a handshake has no body
        self._problem = None  # BodyTooLarge or BodyIncomplete, once found

    def method(self):
        return self.scope.get("method", "GET")

    def target(self):
        raw = self.scope.get("raw_path")
        path = (
            raw.decode("latin-1")
            if raw
            else urllib.parse.quote(self.scope["path"], safe=SAFE_IN_PATH)
        )
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
        self._verification = Verification(options)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        verification = self._verification
        forged = verification.customer_id_header.encode("latin-1")
        scope = dict(
            scope,
            headers=[(name, value) for name, value in scope["headers"] if name.lower() != forged],
        )
        if verification.exempt(scope["path"]):
            return await self.app(scope, receive, send)
        request = _ASGIRequest(scope)
        customer, answer = await self._decide(request, receive)
        if answer is not None:
            return await _refuse(scope, send, *answer)
        scope.setdefault("state", {})["customer_id"] = customer.customer_id
        await self.app(
            scope, _replay(request.messages, receive) if request.messages else receive, send
        )

    async def _decide(self, request, receive):
        """The core's decision, asked again when it needs what is not here yet: the body (received
        on the loop) or a credential not in memory (looked up off the loop)."""
        verifier, memory_verifier = self._verification.verifiers()
        limit = self._verification.config["max_body_size"]
        while True:
            try:
                try:
                    return decide(memory_verifier, request)
                except StoreNeeded:
                    return await asyncio.get_running_loop().run_in_executor(
                        None, decide, verifier, request
                    )
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
