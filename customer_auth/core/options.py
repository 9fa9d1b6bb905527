"""The plugin's configuration as Kong's schema: every option with its default and validation.
The Kong plugin declares it (customer_verification.Schema); the service middlewares take the
same options, with the same defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from customer_auth.core import v1
from customer_auth.core.terms import BY_ID, BY_USERNAME, RFC9421, V1
from customer_auth.errors import InvalidOption

# One option as Kong's schema declares it (a JSON object: type, default, rules, description).
Spec = dict[str, Any]

_HEADER_NAME = {"match": "^[%w%-]+$"}


def _field(kind: str, default: object, description: str, **rules: object) -> Spec:
    """One option as Kong's schema declares it: its type, default, rules and what it does."""
    return {
        "type": kind,
        "required": default is not None,
        "default": default,
        **rules,
        "description": description,
    }


Schema: tuple[dict[str, Spec], ...] = (
    {
        "signature_schemes": _field(
            "array",
            [V1, RFC9421],
            "Which signature schemes the route accepts: rfc9421 "
            "(HTTP Message Signatures) and/or v1 (the three client-* headers).",
            len_min=1,
            elements={"type": "string", "one_of": [V1, RFC9421]},
        )
    },
    {
        "required_components": _field(
            "array",
            ["@method", "@path", "@query", "content-digest"],
            "What an RFC 9421 signature must cover; content-digest only when the request "
            "has a body, as nginx reads it.",
            elements={"type": "string", "match": "^[@%w%-]+$"},
        )
    },
    {
        "max_body_size": _field(
            "integer",
            1048576,
            "Bytes of body read to check a Content-Digest; a larger body gets 413. At most "
            "64 MiB: the body is read into the plugin server's memory.",
            between=[0, 67108864],
        )
    },
    {
        "certificate_id_header": _field(
            "string",
            v1.CERTIFICATE_ID_HEADER,
            "v1: the header holding the certificate id.",
            **_HEADER_NAME,
        )
    },
    {
        "request_time_header": _field(
            "string",
            v1.REQUEST_TIME_HEADER,
            "v1: the header holding the request time, Unix epoch seconds.",
            **_HEADER_NAME,
        )
    },
    {
        "signature_header": _field(
            "string",
            v1.SIGNATURE_HEADER,
            "v1: the header holding the hex SHA-256 signature.",
            **_HEADER_NAME,
        )
    },
    {
        "customer_id_header": _field(
            "string",
            "X-Customer-Id",
            "The upstream header set to the verified customer's "
            "uuid (set, never added; a client's copy is removed).",
            **_HEADER_NAME,
        )
    },
    {
        "clock_skew": _field(
            "integer",
            300,
            "Seconds a signature's time may be behind or ahead of Kong's clock.",
            between=[1, 86400],
        )
    },
    {
        "cache_ttl": _field(
            "number",
            60,
            "Seconds a credential is used without asking Postgres (changes reach "
            "every node within a second anyway, through LISTEN/NOTIFY).",
            between=[0, 86400],
        )
    },
    {
        "negative_cache_ttl": _field(
            "number",
            5,
            "Seconds an unknown certificate is remembered as unknown.",
            between=[0, 86400],
        )
    },
    {
        "stale_ttl": _field(
            "number",
            300,
            "Seconds past cache_ttl a cached credential keeps working while Postgres fails.",
            between=[0, 604800],
        )
    },
    {
        "cache_size": _field(
            "integer",
            10000,
            "Credentials kept in memory, least recently used leaving first, and as "
            "many recently verified requests; instances with the same cache options share one "
            "cache.",
            between=[1, 10000000],
        )
    },
    {
        "hide_credentials": _field(
            "boolean",
            False,
            "Remove the signature headers (v1's three, Signature-Input, "
            "Signature) from the upstream request.",
        )
    },
    {
        "consumer_by": _field(
            "array",
            [],
            "Map the verified customer to a Kong consumer: by username (the "
            "certificate id) and/or by id (the customer uuid), tried in this order.",
            elements={"type": "string", "one_of": [BY_USERNAME, BY_ID]},
        )
    },
    {
        "consumer_optional": _field(
            "boolean",
            False,
            "With consumer_by: let a verified customer without a Kong consumer in (else 403).",
        )
    },
    {
        "anonymous": _field(
            "string",
            None,
            "A consumer (username or id) to let in when verification fails with 400 "
            "or 403, or whom another auth plugin already authenticated; never when the store "
            "fails.",
        )
    },
    {
        "run_on_preflight": _field(
            "boolean",
            True,
            "Verify CORS preflight requests too; when false, a preflight "
            "passes unauthenticated, its identity headers cleared.",
        )
    },
    {
        "replay_protection": _field(
            "boolean",
            False,
            "Accept each signed request once: an RFC 9421 signature must "
            "carry a nonce, claimed once per certificate across the cluster on the primary "
            "database while the signature is fresh; v1 requests get 400. With the primary "
            "unreachable, requests get 503.",
        )
    },
)

SPECS: dict[str, Spec] = {name: spec for field in Schema for name, spec in field.items()}
DEFAULTS: dict[str, Any] = {name: spec["default"] for name, spec in SPECS.items()}


# The Lua patterns the schema uses, as Python regular expressions.
_LUA_CLASSES = (("%w", "A-Za-z0-9"), ("%-", "\\-"))

# Python's types for the schema's, as Kong's schema reads JSON (a bool is no number).
_TYPES = {"string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,)}


def _check(name: str, value: object, spec: Spec) -> None:
    """Raises InvalidOption unless ``value`` meets ``spec`` (type, between, len_min, one_of,
    match, elements), as Kong's schema validation would."""
    kind = spec["type"]
    if kind == "array":
        if not isinstance(value, list):
            raise InvalidOption(name, f"expected an array, got {value!r}")
        if len(value) < spec.get("len_min", 0):
            raise InvalidOption(name, f"expected at least {spec['len_min']} element(s)")
        for element in value:
            _check(name, element, spec["elements"])
        return
    if isinstance(value, bool) != (kind == "boolean") or not isinstance(value, _TYPES[kind]):
        raise InvalidOption(
            name, f"expected {'an' if kind == 'integer' else 'a'} {kind}, got {value!r}"
        )
    low, high = spec.get("between", (None, None))
    if low is not None and not low <= value <= high:
        raise InvalidOption(name, f"value should be between {low} and {high}, got {value!r}")
    if "one_of" in spec and value not in spec["one_of"]:
        raise InvalidOption(name, f"expected one of: {', '.join(spec['one_of'])}, got {value!r}")
    if "match" in spec and not re.fullmatch(_regex(spec["match"]), str(value)):
        raise InvalidOption(name, f"invalid value {value!r}")


def _regex(lua_pattern: str) -> str:
    pattern = lua_pattern.removeprefix("^").removesuffix("$")
    for lua, python in _LUA_CLASSES:
        pattern = pattern.replace(lua, python)
    return pattern


def checked(config: Mapping[str, Any]) -> dict[str, Any]:
    """``with_defaults(config)``, once every option in it meets the schema; InvalidOption for
    the first that does not. Kong validates a config before it stores it, but the plugin
    server takes whatever arrives on its socket, and the middleware takes keyword options."""
    config = {name: _as_array(value, SPECS.get(name)) for name, value in config.items()}
    for name, spec in SPECS.items():
        if config.get(name) is not None:
            _check(name, config[name], spec)
    return with_defaults(config)


def _as_array(value: object, spec: Spec | None) -> object:
    """An empty array as Kong may send it: Lua has one kind of table, and cjson encodes an empty
    one as ``{}`` unless it was marked an array (seen under Kong's own bridge)."""
    if spec is not None and spec["type"] == "array" and value == {}:
        return []
    return value


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every option: its value in ``config`` (Kong's keys such as ``__seq__`` left out), or its
    default where it has none."""
    return {
        name: default if config.get(name) is None else config[name]
        for name, default in DEFAULTS.items()
    }
