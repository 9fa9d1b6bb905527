"""The verification as ASGI 3 middleware, websockets included; see customer_auth/middleware.py."""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from customer_auth.service_verification import (
    SAFE_IN_PATH,
    Answer,
    BodyNeeded,
    StoreNeeded,
    Verification,
    decide,
)
from customer_auth.verification import BodyIncomplete, BodyTooLarge, Customer

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from customer_auth.service_verification import Options

# ASGI 3 (as Starlette types it): a connection's scope, its messages, and the application.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _ASGIRequest:
    """An HTTP request or websocket handshake (a GET, no body), every header line kept; the body
    is received only when the verifier asks about it (BodyNeeded, then ``receive``)."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.headers: dict[str, list[str]] = {}
        for name, value in scope["headers"]:
            self.headers.setdefault(name.decode("latin-1").lower(), []).append(
                value.decode("latin-1")
            )
        self.messages: list[Message] = []  # what was received, to replay to the app
        self._size = 0
        self._ended = scope["type"] == "websocket"  # a handshake has no body
        self._problem: Exception | None = None  # BodyTooLarge or BodyIncomplete, once found

    def method(self) -> str:
        return str(self.scope.get("method", "GET"))

    def target(self) -> str:
        raw = self.scope.get("raw_path")
        path: str = (
            raw.decode("latin-1")
            if raw
            else urllib.parse.quote(self.scope["path"], safe=SAFE_IN_PATH)
        )
        query: str = self.scope.get("query_string", b"").decode("latin-1")
        return f"{path}?{query}" if query else path

    def scheme(self) -> str:
        return str(self.scope.get("scheme", "http"))

    def has_body(self) -> bool:
        if self._size or self._problem:
            return True
        if not self._ended:
            raise BodyNeeded(whole=False)
        return False

    def body(self, limit: int) -> bytes:
        if not self._ended and not self._problem:
            raise BodyNeeded(whole=True)
        if self._problem:
            raise self._problem
        return b"".join(message.get("body", b"") for message in self.messages)

    async def receive(self, receive: Receive, whole: bool, limit: int) -> None:
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
        request = _ASGIRequest(scope)
        customer, answer = await self._decide(request, receive)
        if answer is not None:
            return await _refuse(scope, send, *answer)
        assert customer is not None  # decide gives one or the other
        scope.setdefault("state", {})["customer_id"] = customer.customer_id
        await self.app(
            scope, _replay(request.messages, receive) if request.messages else receive, send
        )

    async def _decide(
        self, request: _ASGIRequest, receive: Receive
    ) -> tuple[Customer | None, Answer | None]:
        """The core's decision, asked again when it needs what is not here yet: the body (received
        on the loop) or a credential not in memory (looked up off the loop)."""
        verifier, memory_verifier = self._verification.verifiers()
        limit = self._verification.config["max_body_size"]
        while True:
            try:
                if memory_verifier is not None:
                    try:
                        return decide(memory_verifier, request)
                    except StoreNeeded:
                        pass
                return await asyncio.get_running_loop().run_in_executor(
                    None, decide, verifier, request
                )
            except BodyNeeded as needed:
                await request.receive(receive, needed.whole, limit)


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
