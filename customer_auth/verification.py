"""The one decision, whatever carries the request: the customer id of a correctly signed request,
or a Rejection with its status and message. No rule of verification lives in a face (the Kong
plugin); each hands over a request view and maps the decision back to its world.

A request view has ``headers`` (lower-case name -> list of values as received, every line) and,
asked for only when a signature needs them, ``method()``, ``target()`` (the raw path and query),
``scheme()``, ``has_body()`` (whether the server will forward body bytes: its own view of the
framing, never a re-reading of the headers) and ``body(limit)`` (the raw body, BodyTooLarge
beyond ``limit`` bytes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from customer_auth import message_signatures, signature
from customer_auth.connection import StoreUnavailable
from customer_auth.terms import (
    LOGGER_NAME,
    RFC9421,
    V1,
    BadSignature,
    MalformedSignature,
    SignatureExpired,
)

if TYPE_CHECKING:
    from customer_auth.cache import VerifiedRequests
    from customer_auth.lookup import Credential

log = logging.getLogger(LOGGER_NAME)

DIGEST = "content-digest"  # the component that binds the body
# The options naming the v1 headers (Verifier.v1_headers holds the names themselves).
V1_HEADER_OPTIONS = ("certificate_id_header", "request_time_header", "signature_header")


Headers = Mapping[str, list[str]]  # lower-case name -> every value as received
Config = Mapping[str, Any]  # the plugin's options (customer_auth/schema.py), defaults filled in


class Customer(NamedTuple):
    """A verified caller."""

    customer_id: str
    certificate_id: str


class RequestView(Protocol):
    """The request as the server that carries it passes it on (see the module)."""

    @property
    def headers(self) -> Headers: ...

    def method(self) -> str: ...
    def target(self) -> str: ...
    def scheme(self) -> str: ...
    def has_body(self) -> bool: ...
    def body(self, limit: int) -> bytes: ...


class CredentialSource(Protocol):
    """The credential cache (customer_auth/cache.py), or a view of it answering from memory."""

    @property
    def verified(self) -> VerifiedRequests: ...

    def get(self, certificate_id: str) -> Credential | None: ...


class NonceClaims(Protocol):
    """The nonce store of replay protection (customer_auth/nonces.py)."""

    def claim(self, certificate_id: str, nonce: str, fresh_until: float) -> bool: ...


class BodyTooLarge(Exception):
    """The request body is larger than the verification may read."""


class BodyIncomplete(Exception):
    """The client stopped sending before its body was complete."""


class Rejection(Exception):
    """A request that gets its answer from the verifier: one status and one message per case."""

    # by status
    OUTCOMES = {
        400: "malformed",
        403: "unverified",
        413: "too_large",
        503: "unavailable",
    }

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        outcome: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.message = message
        self.outcome = outcome or self.OUTCOMES[status]  # the requests_total label
        self.headers = headers or {}  # response headers, e.g. Accept-Signature

    def log(self) -> None:
        """A failing store is the operator's problem (a warning, which reaches Kong's error log);
        a client's mistake, or an error already logged where it happened, stays at INFO."""
        if self.outcome == "unavailable":
            log.warning("cannot verify requests, answering %d: %s", self.status, self)
        else:
            log.info("rejected with %d: %s", self.status, self)


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


def unavailable(reason: str, outcome: str | None = None) -> Rejection:
    return Rejection(503, "Authentication is temporarily unavailable", reason, outcome)


def internal_error() -> Rejection:
    return unavailable("internal error", outcome="error")


SCHEME_NAMES = {V1: "the client-* signature headers", RFC9421: "HTTP Message Signatures (RFC 9421)"}


class Verifier:
    """The rules, for one configuration (the plugin's config fields) over a credential cache."""

    def __init__(
        self, config: Config, credentials: CredentialSource, nonces: NonceClaims | None = None
    ) -> None:
        """``nonces``: the NonceStore that replay_protection claims nonces in."""
        self.config = config
        self.credentials = credentials
        # Kong lower-cases them
        self.v1_headers = tuple(config[name].lower() for name in V1_HEADER_OPTIONS)
        self.replay_protection = config["replay_protection"]
        if self.replay_protection and nonces is None:
            raise ValueError("replay_protection needs a nonce store")
        self.nonces = nonces
        # Replay protection takes RFC 9421 signatures only: a v1 signature has no nonce.
        self.schemes = (RFC9421,) if self.replay_protection else tuple(config["signature_schemes"])

    def authenticate(self, request: RequestView) -> Customer:
        """The Customer of a correctly signed request; Rejection otherwise."""
        headers = request.headers
        if RFC9421 in self.schemes and ("signature-input" in headers or "signature" in headers):
            return self._rfc9421(request)
        if V1 in self.schemes:
            return self._v1(headers)
        if any(name in headers for name in self.v1_headers):
            raise (
                nonce_required(self._accept_signature())
                if self.replay_protection
                else scheme_required(self.schemes)
            )
        raise missing("Signature-Input", self._accept_signature())

    # -- v1: the three client-* headers -----------------------------------------------------

    def _v1(self, headers: Headers) -> Customer:
        certificate_id_header, request_time_header, signature_header = self.v1_headers
        signed = (
            self._one_value(headers, certificate_id_header),
            self._one_value(headers, request_time_header),
            self._one_value(headers, signature_header),
        )
        now = time.time()
        customer_id = self.credentials.verified.recall(signed, now, self.config["clock_skew"])
        return (
            self._verify_v1(signed, now)
            if customer_id is None
            else Customer(customer_id, signed[0])
        )

    def _verify_v1(self, signed: tuple[str, str, str], now: float) -> Customer:
        """Checks the three header values in full, and remembers them once verified."""
        names = self.v1_headers
        certificate_id = _parse(signed[0], names[0], signature.parse_certificate_id)
        request_time = _parse(signed[1], names[1], signature.parse_request_time)
        client_signature = _parse(signed[2], names[2], signature.parse_signature)
        try:
            signature.check_fresh(request_time, self.config["clock_skew"], now)
        except SignatureExpired as error:
            raise unverified(f"certificate {certificate_id!r}: {error}") from None
        credential = self._credential(certificate_id)
        try:
            signature.verify(
                client_signature, certificate_id, request_time, credential.keys_valid_at(now)
            )
        except BadSignature:
            raise unverified(f"certificate {certificate_id!r}: signature does not match") from None
        self.credentials.verified.remember(signed, credential, int(request_time), now)
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

    def _rfc9421(self, request: RequestView) -> Customer:
        """Parse, choose by policy, rebuild the base, check the clock, the credential and the
        signature; only a signature that verified gets its body read and digested (a forged one
        costs the server no body), and only such a signature learns anything about the body."""
        headers = request.headers
        for name in ("signature-input", "signature"):
            if not headers.get(name):
                raise missing(name.title(), self._accept_signature())
        try:
            inputs = message_signatures.parse_signature_input(headers["signature-input"])
        except MalformedSignature as error:
            raise malformed("Signature-Input", error, self._accept_signature()) from None
        try:
            signatures = message_signatures.parse_signature(headers["signature"])
        except MalformedSignature as error:
            raise malformed("Signature", error, self._accept_signature()) from None
        chosen = self._choose(request, inputs, signatures, self.config["required_components"])
        message = message_signatures.Message(
            request.method, request.target, request.scheme, headers
        )
        try:
            base = message_signatures.signature_base(message, chosen)
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
            message_signatures.check_fresh(chosen, self.config["clock_skew"], now)
        except SignatureExpired as error:
            raise unverified(f"{reference}: {error}") from None
        credential = self._credential(chosen.keyid)
        try:
            message_signatures.verify(
                chosen, base, credential.keys_valid_at(now), credential.public_keys_valid_at(now)
            )
        except BadSignature:
            raise unverified(f"{reference}: signature does not match") from None
        if DIGEST in chosen.covered_components:
            self._check_body(request, headers, reference)
        if self.replay_protection:
            self._claim_nonce(chosen, reference)
        return Customer(credential.customer_id, chosen.keyid)

    def _choose(
        self, request: RequestView, inputs: Any, signatures: Any, required: Sequence[str]
    ) -> message_signatures.MessageSignature:
        """The signature that meets the route's policy. A signature without the body's digest
        meets it only when the server will forward no body (asked of the server, whatever the
        headers say: a digest of nothing proves nothing, and a body it does not bind is forged)."""
        nonce = self.replay_protection
        try:
            return message_signatures.choose(inputs, signatures, required, nonce)
        except message_signatures.PolicyViolation as error:
            violation = error
        if DIGEST in required and not request.has_body():
            try:
                return message_signatures.choose(
                    inputs, signatures, [name for name in required if name != DIGEST], nonce
                )
            except message_signatures.PolicyViolation as error:
                violation = error
        raise policy_violation(violation, self._accept_signature())

    def _check_body(self, request: RequestView, headers: Headers, reference: str) -> None:
        limit = self.config["max_body_size"]
        try:
            body = request.body(limit)
        except BodyTooLarge:
            raise too_large(limit) from None
        except BodyIncomplete:
            raise Rejection(
                400, "Request body is incomplete", "the client stopped sending its body"
            ) from None
        try:
            message_signatures.check_content_digest(headers.get(DIGEST), body)
        except BadSignature as error:
            raise unverified(f"{reference}: {error}") from None
        except MalformedSignature as error:
            raise malformed("Content-Digest", error) from None

    def _claim_nonce(self, chosen: message_signatures.MessageSignature, reference: str) -> None:
        """The last check, once all else holds (a forged or altered request burns no nonce): the
        nonce's first use for this certificate while the signature is fresh, on any node."""
        fresh_until = chosen.created + self.config["clock_skew"]
        if chosen.expires is not None:
            fresh_until = min(fresh_until, chosen.expires)
        assert self.nonces is not None  # the constructor saw to it
        assert chosen.nonce is not None  # and choose, since the route requires one
        try:
            claimed = self.nonces.claim(chosen.keyid, chosen.nonce, fresh_until)
        except StoreUnavailable as error:
            raise unavailable(f"{reference}: nonce store failed: {error}") from None
        if not claimed:
            raise unverified(f"{reference}: nonce {chosen.nonce!r} replayed")

    # -- shared ------------------------------------------------------------------------------

    def _accept_signature(self) -> dict[str, str]:
        """The response header saying what to sign (built only for an answer that carries it)."""
        return {
            "Accept-Signature": message_signatures.accept_signature(
                self.config["required_components"], self.replay_protection
            )
        }

    def _credential(self, certificate_id: str) -> Credential:
        try:
            credential = self.credentials.get(certificate_id)
        except StoreUnavailable as error:
            raise unavailable(
                f"certificate {certificate_id!r}: credential store failed: {error}"
            ) from None
        if credential is None:
            raise unverified(f"certificate {certificate_id!r} is unknown or revoked")
        return credential


Parsed = TypeVar("Parsed")


def _parse(value: str, name: str, parse: Callable[[str], Parsed]) -> Parsed:
    try:
        return parse(value)
    except MalformedSignature as error:
        raise malformed(name, error) from None
