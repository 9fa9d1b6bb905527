"""The v1 request signature: pure functions, importable by clients without kong_pdk or a database.

A client sends three headers; the signature is the hex SHA-256 of
``"{certificate_id}|{client_key}|{request_time}"``, with ``request_time`` exactly as sent
(Unix epoch seconds). Every check raises its own exception, which the plugin maps to a response.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

from customer_auth.core.terms import parse_certificate_id as parse_certificate_id
from customer_auth.errors import BadSignature, MalformedSignature, SignatureExpired

CERTIFICATE_ID_HEADER = "client-certificate-id"
REQUEST_TIME_HEADER = "client-request-time"
SIGNATURE_HEADER = "client-request-signature"

# Every request parses all three headers, so these use str methods, a fraction of a regex's cost.
MAX_REQUEST_TIME_DIGITS = 12  # the year 33658: enough for any clock, too few to overflow anything


def sign(certificate_id: str, client_key: str, request_time: str) -> str:
    return _digest(certificate_id, client_key, request_time).hex()


def _digest(certificate_id: str, client_key: str, request_time: str) -> bytes:
    return hashlib.sha256(f"{certificate_id}|{client_key}|{request_time}".encode()).digest()


def signed_headers(
    certificate_id: str, client_key: str, now: float | None = None
) -> dict[str, str]:
    request_time = str(int(time.time() if now is None else now))
    return {
        CERTIFICATE_ID_HEADER: certificate_id,
        REQUEST_TIME_HEADER: request_time,
        SIGNATURE_HEADER: sign(certificate_id, client_key, request_time),
    }


def parse_request_time(text: str) -> str:
    if not (0 < len(text) <= MAX_REQUEST_TIME_DIGITS and text.isascii() and text.isdigit()):
        raise MalformedSignature("request time must be Unix epoch seconds")
    return text  # kept as sent: the signature covers the text, not the number


def parse_signature(text: str) -> bytes:
    """The SHA-256 digest the header carries as hex, in either case."""
    try:
        # fromhex skips spaces, so 64 characters give 32 bytes only if all are hex digits.
        digest = bytes.fromhex(text) if len(text) == 64 else b""
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise MalformedSignature("signature must be 64 hexadecimal characters")
    return digest


def check_fresh(request_time: str, clock_skew: float, now: float | None = None) -> None:
    now = time.time() if now is None else now
    offset = now - int(request_time)
    if abs(offset) > clock_skew:
        raise SignatureExpired(
            f"request time is {abs(int(offset))} s {'behind' if offset > 0 else 'ahead of'} the "
            "gateway clock"
        )


def verify(
    signature: bytes, certificate_id: str, request_time: str, client_keys: Iterable[str]
) -> None:
    """Accept if ``signature`` was made with any of ``client_keys``.

    ``signature`` is the digest ``parse_signature`` returns; ``request_time`` is the header text
    as sent. Every key is compared, in constant time, so timing does not tell which matched.
    """
    matched = False
    for client_key in client_keys:
        matched |= hmac.compare_digest(_digest(certificate_id, client_key, request_time), signature)
    if not matched:
        raise BadSignature("signature does not match")
