"""The verification a Python service's middleware (customer_auth/wsgi.py, asgi.py) hands its
requests to: the options and exempt routes, the process's verifiers, a rejection's answer."""

from __future__ import annotations

import http
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict

from customer_auth import metrics, schema
from customer_auth.credentials import Credentials
from customer_auth.terms import LOGGER_NAME
from customer_auth.verification import (
    Customer,
    Rejection,
    RequestView,
    Verifier,
    internal_error,
)

if TYPE_CHECKING:
    from customer_auth.cache import CredentialCache
    from customer_auth.lookup import Credential

log = logging.getLogger(LOGGER_NAME)

SAFE_IN_PATH = "/:@!$&'()*+,;=~-._"

# The plugin's options that act on Kong alone (its consumers, its other plugins, its upstream
# request): a service has none of these, so setting one is refused rather than ignored.
KONG_ONLY = {
    "consumer_by": "Kong consumers exist only in Kong",
    "consumer_optional": "Kong consumers exist only in Kong",
    "anonymous": "Kong consumers exist only in Kong",
    "run_on_preflight": "a service answers its own CORS preflights: exempt them instead",
    "hide_credentials": "the app receives the request as the client sent it",
}

ExemptRule = str | Callable[[str], bool]  # a path prefix, or a predicate on the path
Answer = tuple[str, list[tuple[str, str]], bytes]  # status line, headers, body


class Options(TypedDict, total=False):
    """The middleware's options: the plugin's (customer_auth/schema.py, same defaults) and
    ``exempt`` (tests/test_docs.py holds the two lists to each other)."""

    exempt: Sequence[ExemptRule]
    signature_schemes: list[str]
    required_components: list[str]
    max_body_size: int
    certificate_id_header: str
    request_time_header: str
    signature_header: str
    customer_id_header: str
    clock_skew: int
    cache_ttl: float
    negative_cache_ttl: float
    stale_ttl: float
    cache_size: int
    hide_credentials: bool
    consumer_by: list[str]
    consumer_optional: bool
    anonymous: str | None
    run_on_preflight: bool
    replay_protection: bool


class Verification:
    """Options, exempt routes and, per process, the verifier over the process's credential cache."""

    def __init__(self, options: Options) -> None:
        unknown = set(options) - set(schema.DEFAULTS) - {"exempt"}
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        exempt = options.get("exempt", ())
        self.config = schema.checked({k: v for k, v in options.items() if k != "exempt"})
        for name in KONG_ONLY:
            if self.config[name] != schema.DEFAULTS[name]:
                raise schema.InvalidOption(name, KONG_ONLY[name])
        self.customer_id_header = self.config["customer_id_header"].lower()
        self._prefixes = tuple(rule for rule in exempt if isinstance(rule, str))
        self._predicates = tuple(rule for rule in exempt if callable(rule))
        self._pid: int | None = None
        self._verifiers: tuple[Verifier, Verifier | None]

    def exempt(self, path: str) -> bool:
        return any(_under(path, rule) for rule in self._prefixes) or any(
            rule(path) for rule in self._predicates
        )

    def verifiers(self) -> tuple[Verifier, Verifier | None]:
        """``(verifier, memory_verifier)`` of this process (never inherited); the second answers
        only from the cache (a miss raises StoreNeeded). A route with replay protection has none:
        each of its requests claims its nonce on the primary."""
        if self._pid != os.getpid():
            config = self.config
            cache = Credentials.shared().cache(
                config["cache_ttl"],
                config["negative_cache_ttl"],
                config["stale_ttl"],
                config["cache_size"],
            )
            verifier = Verifier(config, cache, Credentials.shared().nonces)
            if config["replay_protection"]:
                self._verifiers = (verifier, None)
            else:
                self._verifiers = (verifier, Verifier(config, _MemoryOnly(cache)))
            self._pid = os.getpid()
        return self._verifiers

    @staticmethod
    def rejected(rejection: Rejection) -> Answer:
        rejection.log()
        metrics.REQUESTS_BY_OUTCOME[rejection.outcome].inc()
        body = json.dumps({"message": rejection.message}).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *rejection.headers.items(),
        ]
        return f"{rejection.status} {http.HTTPStatus(rejection.status).phrase}", headers, body


def _under(path: str, prefix: str) -> bool:
    """Whether ``prefix`` covers ``path``: the prefix itself or a path below it, segment-wise."""
    if "/./" in path + "/" or "/../" in path + "/":
        return False  # a dot segment may lead the app's router out from under the prefix
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


class StoreNeeded(Exception):
    """The credential is not in memory: asking the store would block."""


class BodyNeeded(Exception):
    """The verifier asked about a body not yet received (ASGI: receiving is awaited)."""

    def __init__(self, whole: bool) -> None:
        self.whole = whole  # all of it, or only enough to tell whether there is one


class _MemoryOnly:
    def __init__(self, cache: CredentialCache) -> None:  # the cache's interface, from memory only
        self._cache = cache
        self.verified = cache.verified

    def get(self, certificate_id: str) -> Credential | None:
        hit, credential = self._cache.cached(certificate_id)
        if not hit:
            raise StoreNeeded()
        found: Credential | None = credential
        return found


def decide(verifier: Verifier, request: RequestView) -> tuple[Customer | None, Answer | None]:
    """The customer, or the answer ``(status line, headers, body)`` for a rejection."""
    try:
        customer = verifier.authenticate(request)
    except Rejection as rejection:
        return None, Verification.rejected(rejection)
    except (StoreNeeded, BodyNeeded):
        raise
    except Exception as error:
        log.exception("unexpected %s while verifying a request", type(error).__name__)
        return None, Verification.rejected(internal_error())
    metrics.REQUESTS_BY_OUTCOME["verified"].inc()
    return customer, None
