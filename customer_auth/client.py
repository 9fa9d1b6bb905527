"""Signing requests as a client of the gateway: HTTP Message Signatures (RFC 9421) by default, the
v1 headers for gateways not yet upgraded. RFC 9421 signing is the reference implementation's
(``http-message-signatures``); nothing here needs Kong or a database.

    requests.get(url, auth=SignedRequestAuth("my-certificate", client_key))
    httpx.post(url, content=body, auth=SignedRequestAuth("my-certificate", private_key=ed25519_key))

Every RFC 9421 signature carries a fresh random ``nonce`` unless told not to: a route with
``replay_protection`` accepts each nonce once, and others ignore it.
"""

from __future__ import annotations

import base64
import datetime
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from customer_auth.core import v1
from customer_auth.errors import StreamingBody

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

Request = TypeVar("Request")  # a requests.PreparedRequest or an httpx.Request

# What the gateway requires by default; Content-Digest is added when there is a body.
COVERED_COMPONENTS = ("@method", "@path", "@query")
LABEL = "sig1"


def new_nonce() -> str:
    """128 random bits in base64url without padding (22 characters)."""
    return secrets.token_urlsafe(16)


def sign_message(
    message: Any,
    certificate_id: str,
    *,
    client_key: str | None = None,
    private_key: Ed25519PrivateKey | None = None,
    body: bytes | None = None,
    created: datetime.datetime | None = None,
    covered_components: Sequence[str] = COVERED_COMPONENTS,
    nonce: str | bool = True,
) -> None:
    """Adds ``Signature-Input`` and ``Signature`` (and ``Content-Digest`` for a body) to
    ``message``: anything with ``method``, an absolute ``url`` and ``headers``, such as a
    ``requests.PreparedRequest`` or an ``httpx.Request``. Exactly one of ``client_key`` (a shared
    secret: hmac-sha256) and ``private_key`` (an ed25519 private key) signs. ``nonce``: True for
    a new random one, a string for that one, False for none."""
    from http_message_signatures import HTTPMessageSigner, HTTPSignatureKeyResolver, algorithms

    if (client_key is None) == (private_key is None):
        raise ValueError("give a client_key or a private_key")

    secret = private_key if private_key is not None else str(client_key).encode("utf-8")

    class OneKey(HTTPSignatureKeyResolver):  # type: ignore[misc]  # the library is untyped
        def resolve_private_key(self, key_id: str) -> object:
            return secret

        def resolve_public_key(self, key_id: str) -> object:
            raise NotImplementedError("signing only")

    algorithm = algorithms.ED25519 if private_key is not None else algorithms.HMAC_SHA256
    HTTPMessageSigner(signature_algorithm=algorithm, key_resolver=OneKey()).sign(
        message,
        key_id=certificate_id,
        label=LABEL,
        created=created,
        nonce=new_nonce() if nonce is True else nonce or None,
        covered_component_ids=covered_components,
        body=body or None,
    )


def _body(request: Any) -> bytes | None:
    """The body bytes of a requests or httpx request; StreamingBody for a stream."""
    if hasattr(request, "content"):  # httpx
        try:
            content: bytes = request.content
            return content
        except Exception as error:  # httpx.RequestNotRead
            raise StreamingBody(
                f"cannot sign a streaming body ({type(error).__name__}): send bytes"
            ) from None
    body = request.body  # requests
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    raise StreamingBody(f"cannot sign a streaming body ({type(body).__name__}): send bytes")


try:  # an httpx.Auth where httpx is installed: httpx then reads a streaming body first
    from httpx import Auth as _HttpxAuth
except ImportError:  # requests alone
    _HttpxAuth = object  # type: ignore[misc,assignment]


class SignedRequestAuth(_HttpxAuth):
    """Signs each outgoing request; works as ``auth=`` for both requests and httpx.

    With httpx it is an ``httpx.Auth`` that asks for the body first (``requires_request_body``),
    so a streaming body is read and signed; requests calls it with the prepared request, whose
    body must then be bytes or text. ``scheme="v1"`` sends the three client-* headers instead (a
    shared secret only), which carry no nonce; ``nonce=False`` signs RFC 9421 without one.
    """

    requires_request_body = True

    def __init__(
        self,
        certificate_id: str,
        client_key: str | None = None,
        *,
        private_key: Ed25519PrivateKey | None = None,
        scheme: Literal["rfc9421", "v1"] = "rfc9421",
        nonce: str | bool = True,
    ) -> None:
        if scheme not in ("rfc9421", "v1"):
            raise ValueError("scheme is rfc9421 or v1")
        if scheme == "v1" and client_key is None:
            raise ValueError("v1 signs with a client_key")
        self.certificate_id = certificate_id
        self.scheme = scheme
        self._client_key = client_key
        self._private_key = private_key
        self._nonce = nonce

    def auth_flow(self, request: Any) -> Any:
        """httpx's: the request, signed (its body already read)."""
        yield self(request)

    def __call__(self, request: Request) -> Request:
        if self.scheme == "v1":
            headers = v1.signed_headers(self.certificate_id, str(self._client_key))
            request.headers.update(headers)  # type: ignore[attr-defined]
        else:
            sign_message(
                request,
                self.certificate_id,
                client_key=self._client_key,
                private_key=self._private_key,
                body=_body(request),
                nonce=self._nonce,
            )
        return request

    def __repr__(self) -> str:
        return f"SignedRequestAuth(certificate_id={self.certificate_id!r}, scheme={self.scheme!r})"


def load_public_key(text: str) -> bytes:
    """The raw 32 bytes of an ed25519 public key given as PEM or as base64 of the raw key."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        key = serialization.load_pem_public_key(text.encode("ascii"))
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 32:
        raise ValueError("an ed25519 public key is 32 bytes")
    return raw


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An ed25519 private key from PEM (PKCS#8)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = serialization.load_pem_private_key(text.encode("ascii"), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an ed25519 private key")
    return key
