"""The verification as ASGI 3 middleware, websockets included; see customer_auth/middleware.py.
The decision runs once per request on the event loop; what it needs is received (the body) or
looked up off the loop (a credential not in memory, a nonce claim)."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from customer_auth.core.credential import Customer
from customer_auth.core.needs import (
    ANSWER_ERRORS,
    Body,
    CredentialFor,
    HasBody,
    Need,
    Parts,
    RequestParts,
    advance,
)
from customer_auth.errors import BodyIncomplete, BodyTooLarge
from customer_auth.service.common import SAFE_IN_PATH, Verification

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from customer_auth.service.common import Options
    from customer_auth.store.cache import CredentialCache
    from customer_auth.store.nonces import NonceStore

# ASGI 3 (as Starlette types it): a connection's scope, its messages, and the application.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _ASGIRequest:
    """An HTTP request or websocket handshake (a GET, no body), every header line kept; the body
    is received only when the decision asks about it, and kept to replay to the app."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self._receive = receive
        self.headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(
                value.decode("latin-1")
            )
        self.messages: list[Message] = []  # what was received, to replay to the app
        self._size = 0
        self._ended = scope["type"] == "websocket"  # a handshake has no body
        self._problem: Exception | None = None  # BodyTooLarge or BodyIncomplete, once found

    def parts(self, need: RequestParts) -> Parts:
        raw = self.scope.get("raw_path")
        path: str = (
            raw.decode("latin-1")
            if raw
            else urllib.parse.quote(self.scope["path"], safe=SAFE_IN_PATH)
        )
        query: str = self.scope.get("query_string", b"").decode("latin-1")
        return Parts(
            str(self.scope.get("method", "GET")),
            f"{path}?{query}" if query else path,
            str(self.scope.get("scheme", "http")),
        )

    async def has_body(self, limit: int) -> bool:
        """The first message says: a body, or none."""
        await self._take(whole=False, limit=limit)
        return bool(self._size or self._problem)

    async def body(self, limit: int) -> bytes:
        await self._take(whole=True, limit=limit)
        if self._problem:
            raise self._problem
        return b"".join(message.get("body", b"") for message in self.messages)

    async def _take(self, whole: bool, limit: int) -> None:
        """Receives the body (``whole``) or its first message, never more than ``limit`` bytes."""
        while not self._ended and not self._problem:
            message = await self._receive()
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

    def __init__(self, app: ASGIApp, **options: Unpack[Options]) -> None:
        self.app = app
        self._verification = Verification(options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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
        request = _ASGIRequest(scope, receive)
        try:
            customer = await self._decide(request)
        except Exception as error:
            return await _refuse(scope, send, *verification.refusal(error))
        verification.verified()
        scope.setdefault("state", {})["customer_id"] = customer.customer_id
        await self.app(
            scope, _replay(request.messages, receive) if request.messages else receive, send
        )

    async def _decide(self, request: _ASGIRequest) -> Customer:
        """The decision, in one pass: each need answered on the loop, or off it when it blocks."""
        verifier, cache, nonces = self._verification.process()
        flow = verifier.decide(request.headers)
        need, customer = advance(flow)
        while need is not None:
            try:
                need, customer = advance(flow, await self._answer(need, request, cache, nonces))
            except ANSWER_ERRORS as error:
                need, customer = advance(flow, error=error)
        assert customer is not None
        return customer

    async def _answer(
        self, need: Need, request: _ASGIRequest, cache: CredentialCache, nonces: NonceStore
    ) -> object:
        limit = self._verification.max_body_size
        if isinstance(need, RequestParts):
            return request.parts(need)
        if isinstance(need, HasBody):
            return await request.has_body(limit)
        if isinstance(need, Body):
            return await request.body(min(need.limit, limit))
        loop = asyncio.get_running_loop()
        if isinstance(need, CredentialFor):
            hit, credential = cache.cached(need.certificate_id)  # in memory: no wait
            if hit:
                return credential
            return await loop.run_in_executor(None, cache.get, need.certificate_id)
        return await loop.run_in_executor(
            None, nonces.claim, need.certificate_id, need.nonce, need.fresh_until
        )


async def _refuse(
    scope: Scope, send: Send, status: str, headers: list[tuple[str, str]], payload: bytes
) -> None:
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


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed
