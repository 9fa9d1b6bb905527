"""What a decision needs (customer_auth/core/decision.py), and how a face drives one::

    flow = verifier.decide(headers)      # lower-case name -> every value as received
    need = next(flow)                    # RequestParts, HasBody, Body, CredentialFor, NonceClaim
    need = flow.send(answer)             # ... or flow.throw(StoreUnavailable(...)), a BodyError
    # StopIteration.value: the Customer

``run`` drives a decision for a face that answers synchronously (the Kong plugin, WSGI) with
``answers`` over its request and the stores; the ASGI face drives one with ``advance``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from typing import Any, NamedTuple, Protocol

from customer_auth.core.credential import Credential, Customer
from customer_auth.errors import BodyError, StoreUnavailable


@dataclasses.dataclass(frozen=True)
class RequestParts:
    """The parts of the request line the signature covers; answered with a Parts."""

    method: bool
    target: bool
    scheme: bool


class Parts(NamedTuple):
    """The method, the raw target (path and query, as received) and the scheme; "" for a part
    not asked for."""

    method: str = ""
    target: str = ""
    scheme: str = ""


@dataclasses.dataclass(frozen=True)
class HasBody:
    """Whether the server will forward body bytes, by its own view of the framing (never a
    re-reading of the headers); answered with a bool."""


@dataclasses.dataclass(frozen=True)
class Body:
    """The raw body, at most ``limit`` bytes; answered with bytes, or BodyTooLarge or
    BodyIncomplete thrown in."""

    limit: int


@dataclasses.dataclass(frozen=True)
class CredentialFor:
    """The certificate's credential; answered with it or None (unknown or revoked), or
    StoreUnavailable thrown in."""

    certificate_id: str


@dataclasses.dataclass(frozen=True)
class NonceClaim:
    """Replay protection: whether this is the nonce's first use for the certificate until
    ``fresh_until`` (epoch seconds); answered with a bool, or StoreUnavailable thrown in."""

    certificate_id: str
    nonce: str
    fresh_until: float


Need = RequestParts | HasBody | Body | CredentialFor | NonceClaim
Flow = Generator[Need, Any, Customer]


class RequestView(Protocol):
    """A synchronous face's request: the parts of its line, and its body as its server has it."""

    def parts(self, need: RequestParts) -> Parts: ...
    def has_body(self) -> bool: ...
    def body(self, limit: int) -> bytes: ...


class CredentialSource(Protocol):
    """The credential cache (customer_auth/store/cache.py)."""

    def get(self, certificate_id: str) -> Credential | None: ...


class NonceClaims(Protocol):
    """The nonce store of replay protection (customer_auth/store/nonces.py)."""

    def claim(self, certificate_id: str, nonce: str, fresh_until: float) -> bool: ...


def answers(
    request: RequestView, credentials: CredentialSource, nonces: NonceClaims | None
) -> Callable[[Need], object]:
    """Answers each need from a face's request and the stores, synchronously."""

    def answer(need: Need) -> object:
        if isinstance(need, RequestParts):
            return request.parts(need)
        if isinstance(need, HasBody):
            return request.has_body()
        if isinstance(need, Body):
            return request.body(need.limit)
        if isinstance(need, CredentialFor):
            return credentials.get(need.certificate_id)
        if nonces is None:
            raise StoreUnavailable("replay protection has no nonce store here")
        return nonces.claim(need.certificate_id, need.nonce, need.fresh_until)

    return answer


# What an answer may raise into the decision instead of answering.
ANSWER_ERRORS = (StoreUnavailable, BodyError)


def advance(
    flow: Flow, reply: object = None, error: Exception | None = None
) -> tuple[Need | None, Customer | None]:
    """Moves ``flow`` on with an answer (or an error of ANSWER_ERRORS): ``(next need, None)``, or
    ``(None, customer)`` at its end. A Rejection raises."""
    try:
        return (flow.send(reply) if error is None else flow.throw(error)), None
    except StopIteration as done:
        return None, done.value


def run(flow: Flow, answer: Callable[[Need], object]) -> Customer:
    """Drives ``flow`` to its end, ``answer`` giving what each need asks for."""
    need, customer = advance(flow)
    while need is not None:
        try:
            need, customer = advance(flow, answer(need))
        except ANSWER_ERRORS as error:
            need, customer = advance(flow, error=error)
    assert customer is not None
    return customer
