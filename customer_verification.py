"""customer_verification: a Kong plugin that authenticates API clients by a signed request.

The client sends ``client-certificate-id``, ``client-request-time`` and
``client-request-signature`` (see customer_auth/signature.py); on success the upstream receives
``X-Customer-Id: <uuid>``, otherwise the client gets a JSON ``{"message": ...}`` answer.

Run by Kong as ``python customer_verification.py -p <kong prefix> -g --no-lua-style``
(``--dump`` prints the plugin's description for Kong's ``query_cmd``).
"""
import sys

if __name__ == "__main__" and ("-g" in sys.argv or "--gevent" in sys.argv):
    # kong-pdk's gevent mode does not patch the standard library: without this, a lock held by
    # one request or a database wait would stall every other request. It must come first.
    from gevent import monkey

    monkey.patch_all()

import logging
import os
import time

import gevent

from customer_auth import signature
from customer_auth.connection import StoreUnavailable
from customer_auth import metrics, operator_log
from customer_auth.credentials import Credentials

log = logging.getLogger(operator_log.LOGGER_NAME)
OPERATOR_LOG = operator_log.install()
VERIFIED = metrics.REQUESTS_BY_OUTCOME["verified"]

version = "1.0.0"

# An authentication priority: after Kong's pre-function (1000000), before acl (950),
# rate-limiting (910) and request-transformer (801), so none of them sees an unverified caller.
priority = 1200

_HEADER_NAME = {"type": "string", "required": True, "match": "^[%w%-]+$"}

Schema = (
    {"certificate_id_header": {**_HEADER_NAME, "default": signature.CERTIFICATE_ID_HEADER}},
    {"request_time_header": {**_HEADER_NAME, "default": signature.REQUEST_TIME_HEADER}},
    {"signature_header": {**_HEADER_NAME, "default": signature.SIGNATURE_HEADER}},
    {"customer_id_header": {**_HEADER_NAME, "default": "X-Customer-Id"}},
    {"clock_skew": {"type": "integer", "required": True, "default": 300, "between": [1, 86400]}},
    {"cache_ttl": {"type": "number", "required": True, "default": 60, "between": [0, 86400]}},
    {"negative_cache_ttl": {"type": "number", "required": True, "default": 5, "between": [0, 86400]}},
    {"stale_ttl": {"type": "number", "required": True, "default": 300, "between": [0, 604800]}},
    {"cache_size": {"type": "integer", "required": True, "default": 10000, "between": [1, 10000000]}},
    {"hide_credentials": {"type": "boolean", "required": True, "default": False}},
)

DEFAULTS = {name: spec["default"] for field in Schema for name, spec in field.items()}

# The config fields naming the three signature headers.
SIGNATURE_HEADERS = ("certificate_id_header", "request_time_header", "signature_header")


class Rejection(Exception):
    """A request that gets its answer from the plugin: one status and one message per case."""

    OUTCOMES = {400: "malformed", 403: "unverified", 503: "unavailable"}

    def __init__(self, status, message, reason, outcome=None):
        super().__init__(reason)
        self.status = status
        self.message = message
        self.outcome = outcome or self.OUTCOMES[status]  # the requests_total label


def missing(header):
    return Rejection(400, f"Missing {header} header", f"no {header} header")


def repeated(header):
    return Rejection(400, f"Header {header} must be sent once", f"{header} sent more than once")


def malformed(header, error):
    return Rejection(400, f"Malformed {header} header: {error}", f"malformed {header}")


def unverified(reason):
    # One answer for unknown certificate, wrong signature and stale time: the client learns
    # nothing about which certificates exist. The reason goes to the log only.
    return Rejection(403, "Request signature could not be verified", reason)


def unavailable(reason, outcome=None):
    return Rejection(503, "Authentication is temporarily unavailable", reason, outcome)


def internal_error():
    return unavailable("internal error", outcome="error")


class PDKError(Exception):
    """A PDK call answered with an error (Lua-style ``(value, err)`` return)."""


def pdk_value(result):
    """kong-pdk returns ``(value, err)`` by default and raises with --no-lua-style."""
    if isinstance(result, tuple):
        value, error = result
        if error:
            raise PDKError(error)
        return value
    return result


class Plugin:
    def __init__(self, config, credentials=None):
        self.config = {name: default if config.get(name) is None else config[name]
                       for name, default in DEFAULTS.items()}
        for name in SIGNATURE_HEADERS:
            self.config[name] = self.config[name].lower()  # Kong gives request headers lower-cased
        credentials = credentials or Credentials.shared()
        self.credentials = credentials.cache(
            ttl=self.config["cache_ttl"],
            negative_ttl=self.config["negative_cache_ttl"],
            stale_ttl=self.config["stale_ttl"],
            max_entries=self.config["cache_size"],
        )

    def access(self, kong):
        try:
            headers = pdk_value(kong.request.get_headers())
            upstream = self.upstream_headers(self.authenticate(headers))
            tell_operator(kong)
            pdk_value(kong.service.request.set_headers(upstream))
        except Rejection as rejection:
            self.reject(kong, rejection)
        except Exception as error:
            # Kong lets the request through when a handler fails: answer it here instead.
            log.exception("unexpected %s while verifying a request", type(error).__name__)
            self.reject(kong, internal_error())
        else:
            VERIFIED.inc()

    def authenticate(self, headers):
        """The customer id of a correctly signed request; Rejection otherwise."""
        config = self.config
        signed = (self.read_header(headers, config["certificate_id_header"]),
                  self.read_header(headers, config["request_time_header"]),
                  self.read_header(headers, config["signature_header"]))
        now = time.time()
        customer_id = self.credentials.verified.recall(signed, now, config["clock_skew"])
        if customer_id is None:
            customer_id = self.verify(signed, now)
        return customer_id

    def verify(self, signed, now):
        """Checks the three header values in full, and remembers them once verified."""
        config = self.config
        certificate_id = self.parse(signed[0], config["certificate_id_header"], signature.parse_certificate_id)
        request_time = self.parse(signed[1], config["request_time_header"], signature.parse_request_time)
        client_signature = self.parse(signed[2], config["signature_header"], signature.parse_signature)
        try:
            signature.check_fresh(request_time, config["clock_skew"], now)
        except signature.SignatureExpired as error:
            raise unverified(f"certificate {certificate_id!r}: {error}") from None
        try:
            credential = self.credentials.get(certificate_id)
        except StoreUnavailable as error:
            raise unavailable(f"certificate {certificate_id!r}: credential store failed: {error}") from None
        if credential is None:
            raise unverified(f"certificate {certificate_id!r} is unknown or revoked")
        try:
            signature.verify(client_signature, certificate_id, request_time, credential.keys_valid_at(now))
        except signature.BadSignature:
            raise unverified(f"certificate {certificate_id!r}: signature does not match") from None
        self.credentials.verified.remember(signed, credential, int(request_time), now)
        return credential.customer_id

    @staticmethod
    def read_header(headers, name):
        """The header's one value, as sent."""
        values = headers.get(name)
        if not values:
            raise missing(name)
        if not isinstance(values, list):
            raise malformed(name, "unexpected value")
        if len(values) > 1:
            raise repeated(name)
        if not isinstance(values[0], str) or not values[0]:
            raise missing(name)
        return values[0]

    @staticmethod
    def parse(value, name, parse):
        try:
            return parse(value)
        except signature.MalformedSignature as error:
            raise malformed(name, error) from None

    def upstream_headers(self, customer_id):
        """One set_headers call: sets (never adds) the customer id, overriding whatever the
        client sent, and with hide_credentials removes the signature headers (an empty list
        clears a header in nginx)."""
        headers = {self.config["customer_id_header"]: customer_id}
        if self.config["hide_credentials"]:
            for name in SIGNATURE_HEADERS:
                headers[self.config[name]] = []
        return headers

    @staticmethod
    def reject(kong, rejection):
        if rejection.outcome == "unavailable":  # the store failed: the operator's problem
            log.warning("cannot verify requests, answering %d: %s", rejection.status, rejection)
        else:  # a client's mistake, or an error already logged where it happened
            log.info("rejected with %d: %s", rejection.status, rejection)
        metrics.REQUESTS_BY_OUTCOME[rejection.outcome].inc()
        tell_operator(kong)
        kong.response.exit(rejection.status, {"message": rejection.message})
        end_event()


def tell_operator(kong):
    """Hands one waiting problem to Kong's error log, where its default level shows it: one round
    trip, only on a request that finds a problem waiting."""
    if OPERATOR_LOG:
        line = OPERATOR_LOG.take()
        if line is not None:
            method, text = line
            pdk_value(getattr(kong.log, method.rsplit(".", 1)[1])(text))


def end_event():
    """Ends the handler right after kong.response.exit, which Kong never answers.

    Any PDK call after it would wait forever. In gevent mode kong-pdk also hands the handler's
    final "ret" to an unbuffered channel that nobody reads after an exit, so returning would
    leave one blocked greenlet per rejected request; GreenletExit ends it silently.
    """
    if isinstance(gevent.getcurrent(), gevent.Greenlet):
        raise gevent.GreenletExit


if __name__ == "__main__":
    from kong_pdk.cli import start_dedicated_server

    logging.basicConfig(
        stream=sys.stderr,  # Kong copies it into its error log; stdout belongs to --dump
        level=os.environ.get("CUSTOMER_VERIFICATION_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s customer_verification: %(message)s",
    )
    if "--dump" not in sys.argv:  # Kong's query_cmd: only the JSON, and no port taken
        metrics.serve_from_environment(lambda: Credentials.shared().health())
    start_dedicated_server("customer_verification", Plugin, version, priority, list(Schema))
