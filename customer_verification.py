"""customer_verification: a Kong plugin that authenticates API clients by a signed request.

The client signs with HTTP Message Signatures (RFC 9421: ``Signature-Input`` and ``Signature``,
see customer_auth/message_signatures.py) or with the older three headers ``client-certificate-id``,
``client-request-time`` and ``client-request-signature`` (customer_auth/signature.py). On success
the upstream receives ``X-Customer-Id: <uuid>``, otherwise the client gets a JSON
``{"message": ...}`` answer. The rules are customer_auth/verification.py's; this module is the
Kong contract and the glue: headers in, one decision, headers or a response out.

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

import gevent

from customer_auth import signature
from customer_auth import metrics, operator_log
from customer_auth.credentials import Credentials
from customer_auth.verification import RFC9421, V1, BodyTooLarge, Rejection, Verifier, internal_error

log = logging.getLogger(operator_log.LOGGER_NAME)
OPERATOR_LOG = operator_log.install()
VERIFIED = metrics.REQUESTS_BY_OUTCOME["verified"]

version = "1.0.0"

# An authentication priority: after Kong's pre-function (1000000), before acl (950),
# rate-limiting (910) and request-transformer (801), so none of them sees an unverified caller.
priority = 1200

_HEADER_NAME = {"type": "string", "required": True, "match": "^[%w%-]+$"}

Schema = (
    {"signature_schemes": {"type": "array", "required": True, "default": [V1, RFC9421], "len_min": 1,
                           "elements": {"type": "string", "one_of": [V1, RFC9421]}}},
    {"required_components": {"type": "array", "required": True,
                             "default": ["@method", "@path", "@query", "content-digest"],
                             "elements": {"type": "string", "match": "^[@%w%-]+$"}}},
    {"max_body_size": {"type": "integer", "required": True, "default": 1048576, "between": [0, 1073741824]}},
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


class KongRequest:
    """The request as verification sees it: the headers, read already, and the rest asked of
    Kong (one round trip each) only when a signature covers it."""

    def __init__(self, kong, headers):
        self._kong = kong
        self.headers = headers
        self._asked = {}

    def _ask(self, function):
        if function not in self._asked:
            self._asked[function] = pdk_value(getattr(self._kong.request, function)())
        return self._asked[function]

    def method(self):
        return self._ask("get_method")

    def target(self):
        return self._ask("get_path_with_query")  # as received, never normalised

    def scheme(self):
        return self._ask("get_scheme")

    def body(self, limit):
        try:
            body = pdk_value(self._kong.request.get_raw_body(limit))  # also a body Kong put in a file
        except Exception as error:  # PDKError, or kong-pdk's PDKException: "request body file too big"
            if "too big" in str(error):
                raise BodyTooLarge() from None
            raise
        # Bytes that are not UTF-8 arrive as surrogates (see accept_raw_bytes): these are the
        # bytes the client sent.
        body = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body or b"")
        if len(body) > limit:
            raise BodyTooLarge()
        return body


class Plugin:
    def __init__(self, config, credentials=None):
        self.config = {name: default if config.get(name) is None else config[name]
                       for name, default in DEFAULTS.items()}
        credentials = credentials or Credentials.shared()
        self.credentials = credentials.cache(
            ttl=self.config["cache_ttl"],
            negative_ttl=self.config["negative_cache_ttl"],
            stale_ttl=self.config["stale_ttl"],
            max_entries=self.config["cache_size"],
        )
        self.verifier = Verifier(self.config, self.credentials)

    def access(self, kong):
        try:
            headers = pdk_value(kong.request.get_headers())
            upstream = self.upstream_headers(self.verifier.authenticate(KongRequest(kong, headers)))
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

    def upstream_headers(self, customer_id):
        """One set_headers call: sets (never adds) the customer id, overriding whatever the
        client sent, and with hide_credentials removes the signature headers (an empty list
        clears a header in nginx)."""
        headers = {self.config["customer_id_header"]: customer_id}
        if self.config["hide_credentials"]:
            for name in self.verifier.v1_headers + ("signature-input", "signature"):
                headers[name] = []
        return headers

    @staticmethod
    def reject(kong, rejection):
        if rejection.outcome == "unavailable":  # the store failed: the operator's problem
            log.warning("cannot verify requests, answering %d: %s", rejection.status, rejection)
        else:  # a client's mistake, or an error already logged where it happened
            log.info("rejected with %d: %s", rejection.status, rejection)
        metrics.REQUESTS_BY_OUTCOME[rejection.outcome].inc()
        tell_operator(kong)
        kong.response.exit(rejection.status, {"message": rejection.message}, rejection.headers or None)
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


def accept_raw_bytes():
    """Lets every byte a client may send reach the plugin.

    HTTP allows any byte from 0x80 up in a header value, and Kong passes header values and bodies
    on as they are, as MessagePack strings. kong-pdk decodes those as strict UTF-8, so one such
    byte kills the connection's handler and the request gets a 5xx. Decoded with surrogateescape
    instead, they arrive as text that the parsers refuse (400), and a body re-encodes to its
    exact bytes; answers carrying such text go back to Kong as the same bytes.
    """
    import functools
    import types

    import kong_pdk.listener
    import msgpack

    kong_pdk.listener.msgpack = types.SimpleNamespace(
        Unpacker=functools.partial(msgpack.Unpacker, unicode_errors="surrogateescape"),
        packb=functools.partial(msgpack.packb, unicode_errors="surrogateescape"),
    )


if __name__ == "__main__":
    from kong_pdk.cli import start_dedicated_server

    logging.basicConfig(
        stream=sys.stderr,  # Kong copies it into its error log; stdout belongs to --dump
        level=os.environ.get("CUSTOMER_VERIFICATION_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s customer_verification: %(message)s",
    )
    if "--dump" not in sys.argv:  # Kong's query_cmd: only the JSON, and no port taken
        metrics.serve_from_environment(lambda: Credentials.shared().health())
        accept_raw_bytes()
    start_dedicated_server("customer_verification", Plugin, version, priority, list(Schema))
