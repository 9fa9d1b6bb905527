"""The Kong face: a request as Kong's PDK shows it, the one decision driven over it, and Kong
told the outcome (the customer authenticated and its headers set, or the answer).

Every PDK call is a round trip to Kong, so the request's parts are asked for only when the
decision needs them, and the body's length is nginx's before the body is (see _body_length).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import gevent

from customer_auth import metrics
from customer_auth.core import options
from customer_auth.core.credential import Customer
from customer_auth.core.decision import (
    Verifier,
    internal_error,
    log_rejection,
    too_many_headers,
)
from customer_auth.core.needs import Parts, RequestParts, answers, run
from customer_auth.core.terms import LOGGER_NAME
from customer_auth.errors import BodyTooLarge, PDKError, Rejection
from customer_auth.kong import operator_log
from customer_auth.kong.consumers import ConsumerMap, is_uuid
from customer_auth.store.credentials import Credentials

log = logging.getLogger(LOGGER_NAME)
OPERATOR_LOG = operator_log.install()

# The most header lines kong.request.get_headers may return (Kong's own bound; its default is 100,
# and lines past the bound are dropped silently). A request with this many may have had more.
MAX_HEADER_LINES = 1000

# Left in kong.ctx.shared for a preflight let through unauthenticated (run_on_preflight off), so
# the shipped fail-closed rule lets it pass too.
PREFLIGHT_MARK = "customer_verification_preflight"

FORM = "application/x-www-form-urlencoded"

# kong-pdk's ``kong`` (or the lean transport's): each attribute path is a PDK call, typed by Kong.
Kong = Any
Consumer = dict[str, Any]  # a Kong consumer entity
UpstreamHeaders = dict[str, str | list[str]]  # set a header, or clear it ([])


def pdk_value(result: Any) -> Any:
    """kong-pdk returns ``(value, err)`` by default and raises with --no-lua-style."""
    if isinstance(result, tuple):
        value, error = result
        if error:
            raise PDKError(error)
        return value
    return result


class KongRequest:
    """The request as verification sees it: every header line, read at once, and the rest asked
    of Kong (one round trip each) only when a signature needs it."""

    def __init__(self, kong: Kong) -> None:
        self._kong = kong
        self.headers: dict[str, list[str]] = pdk_value(kong.request.get_headers(MAX_HEADER_LINES))
        if sum(len(values) for values in self.headers.values()) >= MAX_HEADER_LINES:
            raise too_many_headers(MAX_HEADER_LINES - 1)
        self._scheme: str | None = None
        self._line: tuple[str, str, float] | None = None
        self._length: int | None = None

    def request_line(self) -> tuple[str, str, float]:
        """Method, raw target and HTTP version in one round trip: nginx's ``$request`` (over
        HTTP/2 nginx writes one too). An absolute-form target (``GET http://host/p?q``) is read as
        nginx reads it, the path and query that follow the authority."""
        if self._line is None:
            line = str(pdk_value(self._kong.nginx.get_var("request")) or "")
            method, _, rest = line.partition(" ")
            target, _, protocol = rest.rpartition(" ")
            if not target.startswith("/") and "://" in target:
                authority_and_rest = target.split("://", 1)[1]
                cut = min(
                    (
                        at
                        for at in (authority_and_rest.find("/"), authority_and_rest.find("?"))
                        if at >= 0
                    ),
                    default=len(authority_and_rest),
                )
                rest = authority_and_rest[cut:]
                target = rest if rest.startswith("/") else "/" + rest
            version = protocol.partition("/")[2]
            self._line = method, target, float(version) if version else 0.9
        return self._line

    def method(self) -> str:
        return self.request_line()[0]

    def parts(self, need: RequestParts) -> Parts:
        """Only the parts asked for: the request line is one round trip, the scheme another."""
        method, target, _version = (
            self.request_line() if need.method or need.target else ("", "", 0)
        )
        if need.scheme and self._scheme is None:
            self._scheme = str(pdk_value(self._kong.request.get_scheme()))
        return Parts(method, target, self._scheme or "")

    def http_version(self) -> float:
        return self.request_line()[2]

    def has_body(self) -> bool:
        return self._body_length() > 0

    def body(self, limit: int) -> bytes:
        if self._body_length() > limit:
            raise BodyTooLarge()
        # Any size (0): the length is known to be within the limit, and so the answer is never
        # the nil that Kong's bridge fails to pack (a body in nginx's temp file over a limit).
        body = pdk_value(self._kong.request.get_raw_body(0))
        # Bytes that are not UTF-8 arrive as surrogates (bootstrap.accept_raw_bytes): these are the
        # bytes the client sent.
        return (
            body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body or b"")
        )

    def _body_length(self) -> int:
        """How many body bytes nginx reads and forwards, whatever the framing. A Content-Length
        is nginx's own count (it refuses a request whose value is not one number, or whose body
        differs from it). HTTP/1.x sends a body only with it or Transfer-Encoding. Otherwise
        (chunked, HTTP/2 DATA frames without a length) only reading tells: nginx reads the body
        for kong.request.get_body (whose answer, a form's first argument or nil, Kong can always
        send back) and then holds its length in $content_length."""
        if self._length is None:
            declared = self.headers.get("content-length")
            if declared and declared[0].isascii() and declared[0].isdigit():
                self._length = int(declared[0])
            elif "transfer-encoding" not in self.headers and self.http_version() < 2:
                self._length = 0
            else:
                self._kong.request.get_body(FORM, 1)
                length = pdk_value(self._kong.nginx.get_var("content_length"))
                self._length = int(length) if length else 0
        return self._length


class Plugin:
    """One plugin entity's instance (kong-pdk starts one per config): its options and verifier."""

    def __init__(self, config: Mapping[str, Any], credentials: Credentials | None = None) -> None:
        # Kong validated it before storing it; the socket may carry anything: refused, Kong logs
        # "starting instance: <option>: <reason>" at error level and answers the request 500.
        self.config = options.checked(config)
        store = credentials or Credentials.shared()
        self.credentials = store.cache(
            ttl=self.config["cache_ttl"],
            negative_ttl=self.config["negative_cache_ttl"],
            stale_ttl=self.config["stale_ttl"],
            max_entries=self.config["cache_size"],
        )
        self.nonces = store.nonces
        self.verifier = Verifier(self.config, self.credentials.verified)
        self.consumers = ConsumerMap(
            self.config["consumer_by"], self.config["cache_ttl"], self.config["cache_size"]
        )
        self.anonymous = self.config["anonymous"]
        self.checks_preflight = not self.config["run_on_preflight"]
        # The identity headers of a verified customer without a consumer (the common case), to
        # copy and fill in: cleared ones are an empty list, as nginx takes it.
        self.cleared: UpstreamHeaders = {
            name: []
            for name in (
                "X-Consumer-ID",
                "X-Consumer-Username",
                "X-Consumer-Custom-ID",
                "X-Anonymous-Consumer",
            )
        }
        if self.config["hide_credentials"]:
            self.cleared.update(
                (name, []) for name in self.verifier.v1_headers + ("signature-input", "signature")
            )

    def access(self, kong: Kong) -> None:
        outcome = "verified"
        try:
            request = KongRequest(kong)
            if self.skip(kong, request):
                outcome = "skipped"
                return
            try:
                customer = run(
                    self.verifier.decide(request.headers),
                    answers(request, self.credentials, self.nonces),
                )
            except Rejection as rejection:
                if self.anonymous is None or rejection.status not in (400, 403):
                    raise  # a store that fails (503) never lets anyone in as anonymous
                log.info("anonymous after %d: %s", rejection.status, rejection)
                outcome = "anonymous"
                self.let_in(kong, self.anonymous_consumer(kong), None)
                return
            self.let_in(kong, self.consumer_of(kong, customer), customer)
        except Rejection as rejection:
            outcome = rejection.outcome
            self.reject(kong, rejection)
        except Exception as error:
            # Kong lets the request through when a handler fails: answer it here instead.
            log.exception("unexpected %s while verifying a request", type(error).__name__)
            outcome = "error"
            self.reject(kong, internal_error())
        finally:
            metrics.REQUESTS_BY_OUTCOME[outcome].inc()

    def skip(self, kong: Kong, request: KongRequest) -> bool:
        """A CORS preflight when run_on_preflight is off, or (with ``anonymous`` set) a request
        another auth plugin has authenticated: Kong's logical OR. Costs other requests nothing."""
        if (
            self.checks_preflight
            and "access-control-request-method" in request.headers
            and request.method() == "OPTIONS"
        ):
            # Unauthenticated, so no identity header the client sent may pass on.
            pdk_value(kong.service.request.set_headers(self.upstream_headers(None, None)))
            # for the fail-closed rule (kong.yml)
            pdk_value(kong.ctx.shared.set(PREFLIGHT_MARK, True))
            return True
        return self.anonymous is not None and pdk_value(kong.client.get_credential()) is not None

    def consumer_of(self, kong: Kong, customer: Customer) -> Consumer | None:
        if not self.consumers.consumer_by:
            return None
        consumer = self.consumers.for_customer(
            customer, lambda key, by_username: load_consumer(kong, key, by_username)
        )
        if consumer is None and not self.config["consumer_optional"]:
            log.warning(
                "certificate %r (customer %s) is verified but has no Kong consumer by %s; "
                "answering 403 "
                "(create the consumer, or set consumer_optional)",
                customer.certificate_id,
                customer.customer_id,
                " or ".join(self.consumers.consumer_by),
            )
            raise Rejection(
                403,
                "Request signature could not be verified",
                "no Kong consumer",
                outcome="unverified",
            )
        return consumer

    def anonymous_consumer(self, kong: Kong) -> Consumer:
        anonymous = self.anonymous
        consumer = self.consumers.by_name(
            anonymous, lambda key, by_username: load_consumer(kong, key, by_username)
        )
        if consumer is None:
            log.error(
                "the anonymous consumer %r does not exist; answering 500 (fix the plugin's "
                "anonymous setting)",
                anonymous,
            )
            raise Rejection(
                500, "An unexpected error occurred", "anonymous consumer not found", outcome="error"
            )
        return consumer

    def let_in(self, kong: Kong, consumer: Consumer | None, customer: Customer | None) -> None:
        """One set_headers call that sets or clears every identity header (a client can never
        supply one), then tells Kong who the caller is, as its auth plugins do. In this order:
        should the plugin server die between the two, the fail-closed rule finds no credential
        and answers 503, instead of passing on a request without its headers."""
        credential = {"id": customer.customer_id} if customer else None
        tell_operator(kong)
        pdk_value(kong.service.request.set_headers(self.upstream_headers(consumer, customer)))
        pdk_value(kong.client.authenticate(consumer, credential))

    def upstream_headers(
        self, consumer: Consumer | None, customer: Customer | None
    ) -> UpstreamHeaders:
        """Sets (never adds) or clears (an empty list, as in nginx) each identity header; with
        hide_credentials also removes the signature headers."""
        headers = dict(self.cleared)
        customer_id: str | list[str] = customer.customer_id if customer else []
        headers[self.config["customer_id_header"]] = headers["X-Credential-Identifier"] = (
            customer_id
        )
        if consumer:
            headers["X-Consumer-ID"] = consumer.get("id") or []
            headers["X-Consumer-Username"] = consumer.get("username") or []
            headers["X-Consumer-Custom-ID"] = consumer.get("custom_id") or []
        if consumer and not customer:
            headers["X-Anonymous-Consumer"] = "true"
        return headers

    @staticmethod
    def reject(kong: Kong, rejection: Rejection) -> None:
        log_rejection(rejection)
        tell_operator(kong)
        kong.response.exit(
            rejection.status, {"message": rejection.message}, rejection.headers or None
        )
        end_event()


def load_consumer(kong: Kong, key: str, by_username: bool) -> Consumer | None:
    """Kong's consumer by id (a uuid) or, with ``by_username``, by username; None if none. Kong
    raises on a key that is not a uuid unless ``by_username``, so such a key is never sent."""
    if not by_username and not is_uuid(key):
        return None
    return pdk_value(kong.client.load_consumer(key, by_username)) or None


def tell_operator(kong: Kong) -> None:
    """Hands one waiting problem to Kong's error log, where its default level shows it: one round
    trip, only on a request that finds a problem waiting."""
    if OPERATOR_LOG:
        line = OPERATOR_LOG.take()
        if line is not None:
            method, text = line
            pdk_value(getattr(kong.log, method.rsplit(".", 1)[1])(text))


def end_event() -> None:
    """Ends the handler right after kong.response.exit, which Kong never answers.

    On stock kong-pdk any PDK call after it would wait forever, and in gevent mode kong-pdk hands
    the handler's final "ret" to an unbuffered channel that nobody reads after an exit: returning
    would leave one blocked greenlet per rejected request, so GreenletExit ends it silently. On
    the lean transport the handler is no gevent Greenlet and simply returns.
    """
    if isinstance(gevent.getcurrent(), gevent.Greenlet):
        raise gevent.GreenletExit
