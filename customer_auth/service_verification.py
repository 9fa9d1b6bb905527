"""The verification a Python service's middleware (customer_auth/wsgi.py, asgi.py) hands its
requests to: the options and exempt routes, the process's verifiers, a rejection's answer."""

import http
import json
import logging
import os
import time

from customer_auth import metrics, schema
from customer_auth.credentials import Credentials
from customer_auth.verification import Rejection, Verifier, internal_error

log = logging.getLogger("customer_verification")

SAFE_IN_PATH = "/:@!$&'()*+,;=~-._"


class Verification:
    """Options, exempt routes and, per process, the verifier over the process's credential cache."""

    def __init__(self, options):
        exempt = options.pop("exempt", ())
        unknown = set(options) - set(schema.DEFAULTS)
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        self.config = schema.with_defaults(options)
        self.customer_id_header = self.config["customer_id_header"].lower()
        self._prefixes = tuple(rule for rule in exempt if isinstance(rule, str))
        self._predicates = tuple(rule for rule in exempt if callable(rule))
        self._pid = None

    def exempt(self, path):
        return any(_under(path, rule) for rule in self._prefixes) or any(
            rule(path) for rule in self._predicates
        )

    def verifiers(self):
        """``(verifier, memory_verifier)`` of this process (never inherited); the second answers
        only from the cache (a miss raises StoreNeeded)."""
        if self._pid != os.getpid():
            config = self.config
            cache = Credentials.shared().cache(
                config["cache_ttl"],
                config["negative_cache_ttl"],
                config["stale_ttl"],
                config["cache_size"],
            )
            nonces = Credentials.shared().nonces
            self._verifiers = (
                Verifier(config, cache, nonces),
                Verifier(config, _MemoryOnly(cache), _MemoryOnlyNonces(nonces)),
            )
            self._pid = os.getpid()
        return self._verifiers

    @staticmethod
    def rejected(rejection):
        rejection.log()
        metrics.REQUESTS_BY_OUTCOME[rejection.outcome].inc()
        body = json.dumps({"message": rejection.message}).encode()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *rejection.headers.items(),
        ]
        return f"{rejection.status} {http.HTTPStatus(rejection.status).phrase}", headers, body


def _under(path, prefix):
    """Whether ``prefix`` covers ``path``: the prefix itself or a path below it, segment-wise."""
    if "/./" in path + "/" or "/../" in path + "/":
        return False  # a dot segment may lead the app's router out from under the prefix
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


class StoreNeeded(Exception):
    """The credential is not in memory: asking the store would block."""


class BodyNeeded(Exception):
    """The verifier asked about a body not yet received (ASGI: receiving is awaited)."""

    def __init__(self, whole):
        self.whole = whole  # all of it, or only enough to tell whether there is one


class _MemoryOnly:
    def __init__(self, cache):  # the cache's interface, answered from memory only
        self._cache = cache
        self.verified = cache.verified

    def get(self, certificate_id):
        hit, credential = self._cache.cached(certificate_id)
        if not hit:
            raise StoreNeeded()
        return credential


class _MemoryOnlyNonces:
    """The nonce store's interface, answered from memory only: a replay seen here is refused, a
    claim on the primary raises StoreNeeded."""

    def __init__(self, nonces):
        self._nonces = nonces

    def claim(self, certificate_id, nonce, fresh_until):
        if self._nonces.seen.recall((certificate_id, nonce), time.time()):
            return False
        raise StoreNeeded()


def decide(verifier, request):
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
