"""What the WSGI and ASGI middleware share: their options and exempt routes, the process's
verifier and stores, and a decision's answer as an HTTP status line, headers and body."""

from __future__ import annotations

import http
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypedDict

from customer_auth import metrics
from customer_auth.core import options
from customer_auth.core.decision import Verifier, internal_error, log_rejection
from customer_auth.core.terms import LOGGER_NAME
from customer_auth.errors import InvalidOption, Rejection
from customer_auth.store.credentials import Credentials

if TYPE_CHECKING:
    from customer_auth.store.cache import CredentialCache
    from customer_auth.store.nonces import NonceStore

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
    """The middleware's options: the plugin's (customer_auth/core/options.py, same defaults) and
    ``exempt`` (tests hold the two lists to each other)."""

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
    """Options, exempt routes and, per process, the verifier with the stores it is answered
    from. Options are checked here, when the middleware is built: InvalidOption names a bad one."""

    def __init__(self, given: Options) -> None:
        unknown = set(given) - set(options.DEFAULTS) - {"exempt"}
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        exempt = given.get("exempt", ())
        self.config = options.checked({k: v for k, v in given.items() if k != "exempt"})
        for name in KONG_ONLY:
            if self.config[name] != options.DEFAULTS[name]:
                raise InvalidOption(name, KONG_ONLY[name])
        self.customer_id_header: str = self.config["customer_id_header"].lower()
        self.max_body_size: int = self.config["max_body_size"]
        self._prefixes = tuple(rule for rule in exempt if isinstance(rule, str))
        self._predicates = tuple(rule for rule in exempt if callable(rule))
        self._pid: int | None = None
        self._process: tuple[Verifier, CredentialCache, NonceStore]

    def exempt(self, path: str) -> bool:
        return any(_under(path, rule) for rule in self._prefixes) or any(
            rule(path) for rule in self._predicates
        )

    def process(self) -> tuple[Verifier, CredentialCache, NonceStore]:
        """``(verifier, cache, nonces)`` of this process, never inherited: a process forked by a
        pre-forking server builds its own."""
        if self._pid != os.getpid():
            config, shared = self.config, Credentials.shared()
            cache = shared.cache(
                config["cache_ttl"],
                config["negative_cache_ttl"],
                config["stale_ttl"],
                config["cache_size"],
            )
            self._process = (Verifier(config, cache.verified), cache, shared.nonces)
            self._pid = os.getpid()
        return self._process

    @staticmethod
    def verified() -> None:
        metrics.REQUESTS_BY_OUTCOME["verified"].inc()

    @staticmethod
    def refusal(error: Exception) -> Answer:
        """The answer to a request whose decision raised: its Rejection, or for anything else
        (logged with its traceback) the fail-closed 503."""
        if not isinstance(error, Rejection):
            log.exception("unexpected %s while verifying a request", type(error).__name__)
            error = internal_error()
        log_rejection(error)
        metrics.REQUESTS_BY_OUTCOME[error.outcome].inc()
        body = json.dumps({"message": error.message}).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *error.headers.items(),
        ]
        return f"{error.status} {http.HTTPStatus(error.status).phrase}", headers, body


def _under(path: str, prefix: str) -> bool:
    """Whether ``prefix`` covers ``path``: the prefix itself or a path below it, segment-wise."""
    if "/./" in path + "/" or "/../" in path + "/":
        return False  # a dot segment may lead the app's router out from under the prefix
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")
