"""HTTP Message Signatures (RFC 9421), the profile this plugin accepts: pure functions, importable
by clients without kong_pdk or a database.

A client sends ``Signature-Input`` and ``Signature`` (RFC 8941 dictionaries, one member per
label). The member's ``keyid`` is the certificate id, ``created`` is required, ``expires`` and
``alg`` (``hmac-sha256`` with the customer's client key, or ``ed25519`` with a registered public
key) are optional. The covered components are rebuilt from the request as received into the
signature base (RFC 9421 §2.5); a covered ``Content-Digest`` (RFC 9530) is checked against the
body. Every check raises its own exception (customer_auth/errors.py), which the decision maps to
an answer.

The common form of the fields is parsed here directly; anything else goes through ``http_sf``, a
complete RFC 8941 parser, which gives the same result for the common form (a test holds them to it).
"""

import base64
import binascii
import dataclasses
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from customer_auth.core.terms import parse_certificate_id
from customer_auth.errors import BadSignature, MalformedSignature, PolicyViolation, SignatureExpired

HMAC_SHA256 = "hmac-sha256"
ED25519 = "ed25519"
ALGORITHMS = (HMAC_SHA256, ED25519)
DERIVED_COMPONENTS = (
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
)
DIGEST_ALGORITHMS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# Bounds on a field, checked by counting characters before any parsing, so that a hostile field
# costs about what an ordinary malformed one does. An honest client sends one or two signatures.
MAX_FIELD_LENGTH = 8192  # a Signature-Input or Signature longer than any honest one
MAX_EQUALS = 48  # '=': a label, its parameters (at most 8 for each of 4 labels), base64 padding
MAX_QUOTES = 160  # '"': the covered components and string parameters of all labels
MAX_SIGNATURES = 4  # labels a route looks at: the first ones, in order
# A nonce's length (replay protection): 16 characters of base64url are 96 random bits, and the
# primary stores it, so it is bounded; the clients here send 22 (128 bits).
NONCE_LENGTH = (16, 128)
# The full parser costs ~50 times the common form's per character: only short fields take it.
MAX_UNCOMMON_LENGTH = 1024
MAX_UNCOMMON_ITEMS = 100  # its spaces and ';' (items and parameters)
DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclasses.dataclass(frozen=True)
class MessageSignature:
    label: str
    covered_components: tuple[str, ...]  # component names, as signed (no parameters accepted)
    created: int
    keyid: str
    alg: str | None = None
    expires: int | None = None
    signature: bytes = b""
    signature_params: str = ""  # the serialized inner list with its parameters, as in the base
    nonce: str | None = None


# -- parsing ---------------------------------------------------------------------------------

# A Signature-Input member: the covered components, the parameters, the inner list as serialized.
Input = tuple[tuple[str, ...], dict[str, Any], str]
Member = TypeVar("Member")

# Strings without escapes, spaces, ')' or ';' (so they can be split on those); others take the
# full parser.
_SF_STRING = r'"[\x21\x23-\x28\x2a-\x3a\x3c-\x5b\x5d-\x7e]*"'
_PARAM = r";[a-z*][a-z0-9_.*-]{0,63}=(?:-?(?:0|[1-9][0-9]{0,14})|" + _SF_STRING + r")"
_INPUT_MEMBER = re.compile(
    r"([a-z*][a-z0-9_.*-]{0,63})=(\((?:"
    + _SF_STRING
    + r"(?: "
    + _SF_STRING
    + r")*)?\)(?:"
    + _PARAM
    + r")*)"
)
_SIGNATURE_MEMBER = re.compile(r"([a-z*][a-z0-9_.*-]{0,63})=:([A-Za-z0-9+/]*={0,2}):")
_MEMBER_SEPARATOR = re.compile(r"[ \t]*,[ \t]*")


def _field(values: Sequence[str]) -> str:
    """A field's lines as one value (RFC 9110 §5.3), bounded."""
    text = ", ".join(value.strip(" \t") for value in values)
    if len(text) > MAX_FIELD_LENGTH:
        raise MalformedSignature(f"longer than {MAX_FIELD_LENGTH} characters")
    if not text.isascii():
        raise MalformedSignature("not ASCII")
    if text.count("=") > MAX_EQUALS or text.count('"') > MAX_QUOTES:
        raise MalformedSignature("too many labels, parameters or components")
    return text


def _fast_members(text: str, member: re.Pattern[str]) -> list[tuple[str, re.Match[str]]] | None:
    """``[(label, match)]`` when every member has the common form, else None."""
    members: list[tuple[str, re.Match[str]]] = []
    position = 0
    while True:
        match = member.match(text, position)
        if match is None:
            return None
        members.append((match.group(1), match))
        position = match.end()
        if position == len(text):
            return members
        separator = _MEMBER_SEPARATOR.match(text, position)
        if separator is None or separator.end() == len(text):
            return None
        position = separator.end()


def _no_duplicates(labels: list[str]) -> None:
    if len(set(labels)) != len(labels):
        raise MalformedSignature("a label appears twice")


_LABEL = re.compile(r"[a-z*][a-z0-9_.*-]{0,63}")


def _parse_dictionary(text: str) -> dict[str, tuple[Any, Any]]:
    """The full RFC 8941 parser: ``{label: (value, params)}``; duplicate labels are refused."""
    import http_sf

    if len(text) > MAX_UNCOMMON_LENGTH or text.count(" ") + text.count(";") > MAX_UNCOMMON_ITEMS:
        raise MalformedSignature(
            f"not in the common form, and longer than the {MAX_UNCOMMON_LENGTH} characters "
            f"or {MAX_UNCOMMON_ITEMS} items the full parser is given"
        )

    labels: list[str] = []
    try:
        parsed = http_sf.parse(
            text.encode("ascii"),
            tltype="dictionary",
            on_duplicate_key=lambda key, context: labels.append(key),
        )
    except Exception:  # http_sf raises its own ValueErrors and more for what it cannot parse
        raise MalformedSignature("not a structured field dictionary (RFC 8941)") from None
    if labels:
        raise MalformedSignature("a label appears twice")
    if not isinstance(parsed, dict):
        raise MalformedSignature("not a structured field dictionary (RFC 8941)")
    if not all(_LABEL.fullmatch(label) for label in parsed):
        # RFC 8941 keys allow no other form
        raise MalformedSignature("a label is longer than 64 characters")
    members: dict[str, tuple[Any, Any]] = {}
    for label, member in parsed.items():
        if not isinstance(member, tuple):  # an inner list or item always has its parameters
            raise MalformedSignature(f"{label} is not an item or an inner list")
        members[label] = member
    return members


def _parse_members(
    values: Sequence[str],
    member: re.Pattern[str],
    from_match: Callable[[str, re.Match[str]], Member],
    from_parsed: Callable[[str, Any, Any], Member],
) -> dict[str, Member]:
    """A dictionary field: the common form by ``member`` and ``from_match(label, match)``, any
    other through the full parser and ``from_parsed(label, value, params)``."""
    text = _field(values)
    fast = _fast_members(text, member)
    if fast is not None:
        _no_duplicates([label for label, _ in fast])
        return {label: from_match(label, match) for label, match in fast}
    return {
        label: from_parsed(label, value, params)
        for label, (value, params) in _parse_dictionary(text).items()
    }


def parse_signature_input(values: Sequence[str]) -> dict[str, Input]:
    """``{label: (covered_components, params, signature_params_text)}`` from the field's lines."""
    return _parse_members(values, _INPUT_MEMBER, _input_from_match, _input_from_parsed)


def _input_from_match(label: str, match: re.Match[str]) -> Input:
    serialized = match.group(2)
    inner, _, params_text = serialized.partition(")")
    covered = tuple(item[1:-1] for item in inner[1:].split(" ")) if inner != "(" else ()
    params: dict[str, str | int] = {}
    for param in params_text.split(";")[1:]:  # strings hold no ';' here: the regex saw to it
        name, _, raw = param.partition("=")
        params[name] = raw[1:-1] if raw.startswith('"') else int(raw)
    return covered, params, serialized


def _input_from_parsed(label: str, value: Any, params: Any) -> Input:
    import http_sf

    if not isinstance(value, list):
        raise MalformedSignature(f"{label} is not a list of components")
    covered: list[str] = []
    for name, component_params in value:
        if not isinstance(name, str):
            raise MalformedSignature(f"{label}: a component is not a string")
        if component_params:
            raise MalformedSignature(f"{label}: component parameters are not supported")
        covered.append(name)
    serialized: str = http_sf.ser({label: (value, params)}).split("=", 1)[1]
    return tuple(covered), dict(params), serialized


def parse_signature(values: Sequence[str]) -> dict[str, bytes]:
    """``{label: signature bytes}`` from the field's lines."""
    return _parse_members(values, _SIGNATURE_MEMBER, _signature_from_match, _signature_from_parsed)


def _signature_from_match(label: str, match: re.Match[str]) -> bytes:
    try:
        return base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise MalformedSignature(f"{label} is not base64") from None


def _signature_from_parsed(label: str, value: Any, params: Any) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedSignature(f"{label} is not a byte sequence")
    return value


def choose(
    inputs: Mapping[str, Input],
    signatures: Mapping[str, bytes],
    required_components: Sequence[str],
    nonce_required: bool = False,
) -> MessageSignature:
    """The first signature whose parameters meet the policy; PolicyViolation if none does.

    ``required_components`` must all be covered; ``created`` (an integer) and ``keyid`` (a
    certificate id) are required; ``alg``, when present, must be one this plugin knows; a
    ``nonce``, when required, must be a string of NONCE_LENGTH characters (else it is not looked
    at).
    """
    reasons: list[str] = []
    for label, (covered, params, serialized) in list(inputs.items())[:MAX_SIGNATURES]:
        missing = [name for name in required_components if name not in covered]
        if missing:
            reasons.append(f"{label} does not cover {', '.join(missing)}")
            continue
        if label not in signatures:
            reasons.append(f"{label} has no Signature")
            continue
        created, keyid, alg, expires, nonce = (
            params.get(name) for name in ("created", "keyid", "alg", "expires", "nonce")
        )
        if not isinstance(created, int) or isinstance(created, bool):
            reasons.append(f"{label} has no integer created")
        elif not isinstance(keyid, str):
            reasons.append(f"{label} has no keyid")
        elif alg is not None and alg not in ALGORITHMS:
            reasons.append(f"{label} has an unsupported alg")
        elif expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
            reasons.append(f"{label} has an expires that is not an integer")
        elif len(set(covered)) != len(covered):
            reasons.append(f"{label} covers a component twice")
        elif nonce_required and nonce is None:
            reasons.append(f"{label} has no nonce")
        elif nonce_required and not (
            isinstance(nonce, str) and NONCE_LENGTH[0] <= len(nonce) <= NONCE_LENGTH[1]
        ):
            reasons.append(
                f"{label} has a nonce that is not a string of {NONCE_LENGTH[0]} to "
                f"{NONCE_LENGTH[1]} "
                "characters"
            )
        else:
            try:
                parse_certificate_id(keyid)
            except MalformedSignature as error:
                reasons.append(f"{label} has a keyid that is no certificate id ({error})")
                continue
            return MessageSignature(
                label, covered, created, keyid, alg, expires, signatures[label], serialized, nonce
            )
    raise PolicyViolation(
        "; ".join(reasons[:2]) + (f" (and {len(reasons) - 2} more)" if len(reasons) > 2 else "")
        if reasons
        else "no signature"
    )


def check_fresh(signature: MessageSignature, clock_skew: float, now: float) -> None:
    offset = now - signature.created
    if abs(offset) > clock_skew:
        raise SignatureExpired(
            f"created is {abs(int(offset))} s {'behind' if offset > 0 else 'ahead of'} the "
            "gateway clock"
        )
    if signature.expires is not None and now > signature.expires:
        raise SignatureExpired(f"expired {int(now - signature.expires)} s ago")


# -- the signature base ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Message:
    """A request as received, for the components: only the parts the covered components need
    (parts_needed) are filled in, since asking for one may cost a round trip (Kong)."""

    method: str  # the request method
    target: str  # the raw request target: path and query, as received
    scheme: str
    headers: Mapping[str, list[str]]  # lower-case name -> [value, ...] as received


# The derived components that need each part of the request line.
_NEEDS_TARGET = frozenset(("@request-target", "@path", "@query", "@target-uri"))
_NEEDS_SCHEME = frozenset(("@scheme", "@target-uri"))


def parts_needed(
    signature: MessageSignature, headers: Mapping[str, list[str]]
) -> tuple[bool, bool, bool]:
    """``(method, target, scheme)``: which parts of the request line the signature base of
    ``signature`` needs. @authority needs the scheme only when the Host's port may be its
    default one."""
    covered = set(signature.covered_components)
    scheme = bool(covered & _NEEDS_SCHEME)
    if "@authority" in covered and not scheme:
        hosts = headers.get("host") or [""]
        scheme = hosts[0].strip().rpartition(":")[2] in DEFAULT_PORTS.values()
    return "@method" in covered, bool(covered & _NEEDS_TARGET), scheme


def component_value(message: Message, name: str) -> str:
    if name == "@method":
        return message.method
    if name == "@request-target":
        return message.target
    if name == "@path":
        return message.target.partition("?")[0] or "/"
    if name == "@query":
        return "?" + message.target.partition("?")[2]
    if name == "@authority":
        return _authority(message)
    if name == "@scheme":
        return message.scheme.lower()
    if name == "@target-uri":
        return f"{message.scheme.lower()}://{_authority(message)}{message.target}"
    if name.startswith("@"):
        raise MalformedSignature(f"component {name} is not supported")
    values = message.headers.get(name)
    if not values:
        raise MalformedSignature(f"covered field {name} is not in the request")
    return ", ".join(value.strip(" \t") for value in values)


def _authority(message: Message) -> str:
    hosts = message.headers.get("host")
    if not hosts or len(hosts) != 1:
        raise MalformedSignature("@authority needs one Host header")
    authority = hosts[0].strip().lower()
    host, _, port = authority.rpartition(":")
    if port in DEFAULT_PORTS.values() and DEFAULT_PORTS.get(message.scheme.lower()) == port:
        return host
    return authority


def signature_base(message: Message, signature: MessageSignature) -> bytes:
    lines = []
    for name in signature.covered_components:
        value = component_value(message, name)
        if not value.isascii() or not value.replace("\t", " ").isprintable():
            raise MalformedSignature(
                f"covered component {name} holds characters a signature base cannot"
            )
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {signature.signature_params}')
    return "\n".join(lines).encode("ascii")


# -- content digest and verification ---------------------------------------------------------


def check_content_digest(values: Sequence[str] | None, body: bytes) -> None:
    """The body against ``Content-Digest`` (RFC 9530): every known algorithm it names must match."""
    digests = parse_signature(values) if values else {}
    known = {name: value for name, value in digests.items() if name in DIGEST_ALGORITHMS}
    if not known:
        raise MalformedSignature("Content-Digest names neither sha-256 nor sha-512")
    for name, value in known.items():
        if not hmac.compare_digest(DIGEST_ALGORITHMS[name](body).digest(), value):
            raise BadSignature("content digest does not match the body")


def verify(
    signature: MessageSignature,
    base: bytes,
    client_keys: Sequence[str] = (),
    public_keys: Sequence[bytes] = (),
) -> None:
    """Accept if ``signature`` was made over ``base`` with any of the keys its ``alg`` allows.

    Every key of the kind is tried, so timing does not tell which matched.
    """
    matched = False
    if signature.alg in (None, HMAC_SHA256):
        for client_key in client_keys:
            expected = hmac.new(client_key.encode("utf-8"), base, hashlib.sha256).digest()
            matched |= hmac.compare_digest(expected, signature.signature)
    if signature.alg in (None, ED25519) and len(signature.signature) == 64:
        for public_key in public_keys:
            matched |= _ed25519_verifies(public_key, signature.signature, base)
    if not matched:
        raise BadSignature("signature does not match")


def _ed25519_verifies(public_key: bytes, signature: bytes, base: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, base)
        return True
    except InvalidSignature:
        return False


def accept_signature(required_components: Sequence[str], nonce_required: bool = False) -> str:
    """``Accept-Signature`` (RFC 9421 §5.1): what a signature must cover here."""
    covered = " ".join(f'"{name}"' for name in required_components)
    return f"sig1=({covered});created;keyid" + (";nonce" if nonce_required else "")
