"""The one decision, whatever carries the request, without I/O of its own (sans-IO).

``Verifier.decide(headers)`` is a generator: it yields what it needs next (customer_auth/core/
needs.py) and is sent the answer, as httpx's ``Auth.auth_flow`` is. It returns the Customer of a
correctly signed request or raises a Rejection with its status and message. Each face (the Kong
plugin, WSGI, ASGI) answers the needs its own way, a PDK call, a read of the input, an ``await
receive()``, in one pass: nothing is decided twice, and no rule of verification lives in a face.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from customer_auth.core import rfc9421, v1
from customer_auth.core.credential import Credential, Customer
from customer_auth.core.needs import (
    Body,
    CredentialFor,
    Flow,
    HasBody,
    Need,
    NonceClaim,
    Parts,
    RequestParts,
)
from customer_auth.core.terms import LOGGER_NAME, RFC9421, V1
from customer_auth.errors import (
    BadSignature,
    BodyIncomplete,
    BodyTooLarge,
    MalformedSignature,
    PolicyViolation,
    Rejection,
    SignatureExpired,
    StoreUnavailable,
)

log = logging.getLogger(LOGGER_NAME)

DIGEST = "content-digest"  # the component that binds the body
# The options naming the v1 headers (Verifier.v1_headers holds the names themselves).
V1_HEADER_OPTIONS = ("certificate_id_header", "request_time_header", "signature_header")


Headers = Mapping[str, list[str]]  # lower-case name -> every value as received
Config = Mapping[str, Any]  # the plugin's options (customer_auth/core/options.py), defaults filled


class RecentlyVerified(Protocol):
    """Signed v1 requests accepted lately (customer_auth/store/cache.py), in memory."""

    def recall(self, signed: tuple[str, str, str], now: float, clock_skew: float) -> str | None: ...

    def remember(
        self, signed: tuple[str, str, str], credential: Credential, request_time: int, now: float
    ) -> None: ...


# -- the answers, one status and one message per case -----------------------------------------


def missing(header: str, headers: dict[str, str] | None = None) -> Rejection:
    return Rejection(400, f"Missing {header} header", f"no {header} header", headers=headers)


def repeated(header: str) -> Rejection:
    return Rejection(400, f"Header {header} must be sent once", f"{header} sent more than once")


def too_many_headers(limit: int) -> Rejection:
    # Verifying on a partial view could miss a second copy of a signed header, or the framing.
    return Rejection(
        400, f"Request has more than {limit} header lines", f"more than {limit} header lines"
    )


def policy_violation(error: Exception, headers: dict[str, str]) -> Rejection:
    return Rejection(
        400,
        f"Signature does not meet this route's policy: {error}",
        f"policy: {error}",
        headers=headers,
    )


def malformed(
    header: str, error: Exception | str, headers: dict[str, str] | None = None
) -> Rejection:
    return Rejection(
        400, f"Malformed {header} header: {error}", f"malformed {header}: {error}", headers=headers
    )


def unverified(reason: str) -> Rejection:
    # One answer for unknown certificate, wrong signature, digest mismatch and stale time: the
    # client learns nothing about which certificates exist. The reason goes to the log only.
    return Rejection(403, "Request signature could not be verified", reason)


def nonce_required(headers: dict[str, str]) -> Rejection:
    # A v1 signature cannot carry a nonce: it could be replayed within the clock skew.
    return Rejection(
        400,
        "This route requires HTTP Message Signatures (RFC 9421) with a nonce",
        "a v1 signature on a route with replay_protection",
        headers=headers,
    )


def scheme_required(schemes: Sequence[str]) -> Rejection:
    return Rejection(
        403,
        f"This route requires {' or '.join(SCHEME_NAMES[name] for name in schemes)}",
        "a signature scheme the route does not accept",
    )


def too_large(limit: int) -> Rejection:
    return Rejection(413, f"Request body is larger than {limit} bytes", "body over max_body_size")


def incomplete() -> Rejection:
    return Rejection(400, "Request body is incomplete", "the client stopped sending its body")


def unavailable(reason: str, outcome: str | None = None) -> Rejection:
    return Rejection(503, "Authentication is temporarily unavailable", reason, outcome)


def internal_error() -> Rejection:
    return unavailable("internal error", outcome="error")


def log_rejection(rejection: Rejection) -> None:
    """A failing store is the operator's problem (a warning, which reaches Kong's error log);
    a client's mistake, or an error already logged where it happened, stays at INFO."""
    if rejection.outcome == "unavailable":
        log.warning("cannot verify requests, answering %d: %s", rejection.status, rejection)
    else:
        log.info("rejected with %d: %s", rejection.status, rejection)


SCHEME_NAMES = {V1: "the client-* signature headers", RFC9421: "HTTP Message Signatures (RFC 9421)"}


# -- the decision -----------------------------------------------------------------------------


class Verifier:
    """The rules, for one configuration (the plugin's options). ``recently_verified`` spares a
    repeated v1 request its checks; it is consulted in memory, never through a need."""

    def __init__(self, config: Config, recently_verified: RecentlyVerified | None = None) -> None:
        self.config = config
        self.recently_verified = recently_verified
        # Kong lower-cases them
        self.v1_headers = tuple(config[name].lower() for name in V1_HEADER_OPTIONS)
        self.replay_protection: bool = config["replay_protection"]
        # Replay protection takes RFC 9421 signatures only: a v1 signature has no nonce.
        self.schemes = (RFC9421,) if self.replay_protection else tuple(config["signature_schemes"])

    def decide(self, headers: Headers) -> Flow:
        """The Customer of a correctly signed request; Rejection otherwise (see the module)."""
        if RFC9421 in self.schemes and ("signature-input" in headers or "signature" in headers):
            return (yield from self._rfc9421(headers))
        signed_v1 = any(name in headers for name in self.v1_headers)
        if V1 in self.schemes and (signed_v1 or RFC9421 not in self.schemes):
            return (yield from self._v1(headers))
        if signed_v1:
            raise (
                nonce_required(self._accept_signature())
                if self.replay_protection
                else scheme_required(self.schemes)
            )
        # Unsigned: new clients are pointed at RFC 9421 where the route takes it.
        raise missing("Signature-Input", self._accept_signature())

    # -- v1: the three client-* headers -----------------------------------------------------

    def _v1(self, headers: Headers) -> Flow:
        certificate_id_header, request_time_header, signature_header = self.v1_headers
        signed = (
            self._one_value(headers, certificate_id_header),
            self._one_value(headers, request_time_header),
            self._one_value(headers, signature_header),
        )
        now = time.time()
        if self.recently_verified is not None:
            customer_id = self.recently_verified.recall(signed, now, self.config["clock_skew"])
            if customer_id is not None:
                return Customer(customer_id, signed[0])
        return (yield from self._verify_v1(signed, now))

    def _verify_v1(self, signed: tuple[str, str, str], now: float) -> Flow:
        """Checks the three header values in full, and remembers them once verified."""
        names = self.v1_headers
        certificate_id = _parse(signed[0], names[0], v1.parse_certificate_id)
        request_time = _parse(signed[1], names[1], v1.parse_request_time)
        client_signature = _parse(signed[2], names[2], v1.parse_signature)
        try:
            v1.check_fresh(request_time, self.config["clock_skew"], now)
        except SignatureExpired as error:
            raise unverified(f"certificate {certificate_id!r}: {error}") from None
        credential = yield from self._credential(certificate_id)
        try:
            v1.verify(client_signature, certificate_id, request_time, credential.keys_valid_at(now))
        except BadSignature:
            raise unverified(f"certificate {certificate_id!r}: signature does not match") from None
        if self.recently_verified is not None:
            self.recently_verified.remember(signed, credential, int(request_time), now)
        return Customer(credential.customer_id, certificate_id)

    @staticmethod
    def _one_value(headers: Headers, name: str) -> str:
        values = headers.get(name)
        if not values:
            raise missing(name)
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise malformed(name, "unexpected value")
        # A comma: lines joined (RFC 9110), as WSGI servers do.
        if len(values) > 1 or "," in values[0]:
            raise repeated(name)
        if not values[0]:
            raise missing(name)
        return values[0]

    # -- RFC 9421 ---------------------------------------------------------------------------

    def _rfc9421(self, headers: Headers) -> Flow:
        """Parse, choose by policy, rebuild the base, check the clock, the credential and the
        signature; only a signature that verified gets its body read and digested (a forged one
        costs the server no body), and only such a signature learns anything about the body."""
        for name in ("signature-input", "signature"):
            if not headers.get(name):
                raise missing(name.title(), self._accept_signature())
        try:
            inputs = rfc9421.parse_signature_input(headers["signature-input"])
        except MalformedSignature as error:
            raise malformed("Signature-Input", error, self._accept_signature()) from None
        try:
            signatures = rfc9421.parse_signature(headers["signature"])
        except MalformedSignature as error:
            raise malformed("Signature", error, self._accept_signature()) from None
        chosen = yield from self._choose(inputs, signatures, self.config["required_components"])
        method, target, scheme = rfc9421.parts_needed(chosen, headers)
        parts = (
            (yield RequestParts(method, target, scheme)) if method or target or scheme else Parts()
        )
        try:
            message = rfc9421.Message(parts.method, parts.target, parts.scheme, headers)
            base = rfc9421.signature_base(message, chosen)
        except MalformedSignature as error:
            raise Rejection(
                400,
                f"Signature cannot be checked: {error}",
                f"base: {error}",
                headers=self._accept_signature(),
            ) from None
        now = time.time()
        reference = f"certificate {chosen.keyid!r}"
        try:
            rfc9421.check_fresh(chosen, self.config["clock_skew"], now)
        except SignatureExpired as error:
            raise unverified(f"{reference}: {error}") from None
        credential = yield from self._credential(chosen.keyid)
        try:
            rfc9421.verify(
                chosen, base, credential.keys_valid_at(now), credential.public_keys_valid_at(now)
            )
        except BadSignature:
            raise unverified(f"{reference}: signature does not match") from None
        if DIGEST in chosen.covered_components:
            yield from self._check_body(headers, reference)
        if self.replay_protection:
            yield from self._claim_nonce(chosen, reference)
        return Customer(credential.customer_id, chosen.keyid)

    def _choose(
        self, inputs: Any, signatures: Any, required: Sequence[str]
    ) -> Generator[Need, Any, rfc9421.MessageSignature]:
        """The signature that meets the route's policy. A signature without the body's digest
        meets it only when the server will forward no body (asked of the server, whatever the
        headers say: a digest of nothing proves nothing, and a body it does not bind is forged)."""
        nonce = self.replay_protection
        try:
            return rfc9421.choose(inputs, signatures, required, nonce)
        except PolicyViolation as error:
            violation = error
        if DIGEST in required and not (yield HasBody()):
            try:
                return rfc9421.choose(
                    inputs, signatures, [name for name in required if name != DIGEST], nonce
                )
            except PolicyViolation as error:
                violation = error
        raise policy_violation(violation, self._accept_signature())

    def _check_body(self, headers: Headers, reference: str) -> Generator[Need, Any, None]:
        limit = self.config["max_body_size"]
        try:
            body = yield Body(limit)
        except BodyTooLarge:
            raise too_large(limit) from None
        except BodyIncomplete:
            raise incomplete() from None
        try:
            rfc9421.check_content_digest(headers.get(DIGEST), body)
        except BadSignature as error:
            raise unverified(f"{reference}: {error}") from None
        except MalformedSignature as error:
            raise malformed("Content-Digest", error) from None

    def _claim_nonce(
        self, chosen: rfc9421.MessageSignature, reference: str
    ) -> Generator[Need, Any, None]:
        """The last check, once all else holds (a forged or altered request burns no nonce): the
        nonce's first use for this certificate while the signature is fresh, on any node."""
        fresh_until = chosen.created + self.config["clock_skew"]
        if chosen.expires is not None:
            fresh_until = min(fresh_until, chosen.expires)
        assert chosen.nonce is not None  # choose saw to it: the route requires one
        try:
            claimed = yield NonceClaim(chosen.keyid, chosen.nonce, fresh_until)
        except StoreUnavailable as error:
            raise unavailable(f"{reference}: nonce store failed: {error}") from None
        if not claimed:
            raise unverified(f"{reference}: nonce {chosen.nonce!r} replayed")

    # -- shared ------------------------------------------------------------------------------

    def _accept_signature(self) -> dict[str, str]:
        """The response header saying what to sign (built only for an answer that carries it)."""
        return {
            "Accept-Signature": rfc9421.accept_signature(
                self.config["required_components"], self.replay_protection
            )
        }

    def _credential(self, certificate_id: str) -> Generator[Need, Any, Credential]:
        try:
            credential = yield CredentialFor(certificate_id)
        except StoreUnavailable as error:
            raise unavailable(
                f"certificate {certificate_id!r}: credential store failed: {error}"
            ) from None
        if credential is None:
            raise unverified(f"certificate {certificate_id!r} is unknown or revoked")
        found: Credential = credential
        return found


Parsed = TypeVar("Parsed")


def _parse(value: str, name: str, parse: Callable[[str], Parsed]) -> Parsed:
    try:
        return parse(value)
    except MalformedSignature as error:
        raise malformed(name, error) from None
