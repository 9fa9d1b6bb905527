"""Prometheus metrics of the plugin server, and the HTTP listener that serves them with /health.

Metric objects live here, once per process. No label takes a value a client chooses (certificate
ids are unbounded): every label has a fixed set of values, so cardinality stays fixed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import prometheus_client

from customer_auth.core.terms import LOGGER_NAME

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Request = socket.socket | tuple[bytes, socket.socket]  # socketserver's request

log = logging.getLogger(LOGGER_NAME)

OUTCOMES = (
    "verified",
    "malformed",
    "unverified",
    "too_large",
    "unavailable",
    "error",
    "anonymous",
    "skipped",
)

REQUESTS = prometheus_client.Counter(
    "customer_verification_requests",
    "Requests the plugin answered, by outcome: verified, malformed (400), "
    "unverified (403), too_large (413), unavailable (503: store down, no usable cache), error "
    "(500/503: internal), "
    "anonymous (let in as the anonymous consumer) and skipped (a preflight, or another auth "
    "plugin's caller)",
    ["outcome"],
)
CACHE = prometheus_client.Counter(
    "customer_verification_cache_lookups",
    "Credential cache lookups: hit (answered from memory), miss (asked the "
    "store) and stale (store failed, answered from an expired entry within stale_ttl)",
    ["result"],
)
STORE_LOOKUP_SECONDS = prometheus_client.Histogram(
    "customer_verification_store_lookup_seconds",
    "Time of a credential lookup in Postgres, failed ones included",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
STORE_LOOKUPS_FAILED = prometheus_client.Counter(
    "customer_verification_store_lookups_failed",
    "Credential lookups that failed (unreachable, timed out, refused)",
)
LISTENER_CONNECTED = prometheus_client.Gauge(
    "customer_verification_listener_connected",
    "1 while the change listener's LISTEN is in force, else 0",
)
POOL_IN_USE = prometheus_client.Gauge(
    "customer_verification_pool_connections_in_use",
    "Database connections of the lookup pool in use",
)

# The lean transport's own (customer_auth/kong/transport.py): both gauges are read at scrape time.
KONG_CONNECTIONS = prometheus_client.Gauge(
    "customer_verification_kong_connections",
    "Connections Kong holds open to the plugin server (lean transport)",
)
EVENTS_OPEN = prometheus_client.Gauge(
    "customer_verification_plugin_events_open",
    "Plugin events in progress: a handler running, or waiting for "
    "Kong's next step (lean transport); a level that only grows means handlers that never end",
)
EVENTS_ENDED = prometheus_client.Counter(
    "customer_verification_plugin_events_ended",
    "Events the lean transport ended itself: handler_raised (Kong "
    "answered with the error at once), handler_timeout (no answer for Kong in 60 s) and "
    "never_finished (Kong sent "
    "no next step in 600 s)",
    ["reason"],
)
ACCEPT_ERRORS = prometheus_client.Counter(
    "customer_verification_accept_errors",
    "Times the lean transport could not accept Kong's connections (out of file descriptors or "
    "memory) and backed off",
)
EVENT_END_REASONS = ("handler_raised", "handler_timeout", "never_finished")

for _outcome in OUTCOMES:
    # every series exists from the start, at 0, so rate() sees the first one
    REQUESTS.labels(_outcome)
for _result in ("hit", "miss", "stale"):
    CACHE.labels(_result)

EVENTS_ENDED_BY_REASON = {reason: EVENTS_ENDED.labels(reason) for reason in EVENT_END_REASONS}
REQUESTS_BY_OUTCOME = {outcome: REQUESTS.labels(outcome) for outcome in OUTCOMES}
CACHE_HIT, CACHE_MISS, CACHE_STALE = (
    CACHE.labels("hit"),
    CACHE.labels("miss"),
    CACHE.labels("stale"),
)


# The listener shares the plugin server's process and its file descriptors: it may never hold many.
MAX_CONNECTIONS = 16  # at once; more are closed at accept
CONNECTION_TIMEOUT = 5.0  # seconds a connection may stay silent (idle or slow clients)
# Seconds a connection may take for its whole request and answer: one sending a byte at a time
# resets CONNECTION_TIMEOUT with each, and sixteen of them would keep /health refused.
REQUEST_DEADLINE = 5.0
DEFAULT_ADDRESS = "127.0.0.1"  # as Kong's status_listen: set 0.0.0.0 where a scraper is elsewhere


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    timeout = CONNECTION_TIMEOUT  # applied to the connection before it is read

    def log_message(self, format: str, *args: Any) -> None:  # a scrape a few seconds is no news
        pass


class _Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    """wsgiref's server with at most MAX_CONNECTIONS connections, each timed out when silent."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 64  # the connections over the bound are accepted, and closed, quickly

    def server_bind(self) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().server_bind()

    def process_request(self, request: Request, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Request, client_address: Any) -> None:
        deadline = threading.Timer(REQUEST_DEADLINE, _cut, (request,))
        deadline.daemon = True
        deadline.start()
        try:
            super().process_request_thread(request, client_address)
        finally:
            deadline.cancel()
            self._slots.release()

    def handle_error(self, request: Request, client_address: Any) -> None:
        pass  # a client that timed out or went away: not worth a traceback in Kong's log


def _cut(connection: Request) -> None:
    """Ends a connection past its deadline: its handler's next read or write fails at once."""
    try:
        connection.shutdown(socket.SHUT_RDWR)  # type: ignore[union-attr]  # a stream socket
    except OSError:
        pass  # already closed


HEALTH_STATUS = {"up": "200 OK", "degraded": "200 OK", "down": "503 Service Unavailable"}


def application(
    health: Callable[[], str], registry: prometheus_client.CollectorRegistry | None = None
) -> WSGIApplication:
    """The WSGI app: ``/metrics`` for Prometheus, ``/health`` from ``health()``: "up", "degraded"
    (the store fails, cached customers are still served) or "down". Nothing more: whoever reaches
    the port learns nothing about the database."""
    metrics = prometheus_client.make_wsgi_app(registry or prometheus_client.REGISTRY)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            scraped: Iterable[bytes] = metrics(environ, start_response)
            return scraped
        if path == "/health":
            status = health()
            start_response(HEALTH_STATUS[status], [("Content-Type", "application/json")])
            return [json.dumps({"status": status}).encode()]
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"message": "not found: try /metrics or /health"}']

    return app


def serve_from_environment(
    health: Callable[[], str], registry: prometheus_client.CollectorRegistry | None = None
) -> _Server | None:
    """Serves /metrics and /health when ``CUSTOMER_VERIFICATION_METRICS_PORT`` is set (on
    ``CUSTOMER_VERIFICATION_METRICS_ADDRESS``, by default loopback only); else nothing listens."""
    port = os.environ.get("CUSTOMER_VERIFICATION_METRICS_PORT", "").strip()
    if not port:
        return None
    address = os.environ.get("CUSTOMER_VERIFICATION_METRICS_ADDRESS", "").strip() or DEFAULT_ADDRESS
    try:
        return serve(int(port), health, address, registry)
    except (ValueError, OSError) as error:
        # The plugin still verifies: only its metrics are missing.
        log.error(
            "cannot serve metrics on %s port %r (CUSTOMER_VERIFICATION_METRICS_PORT): %s",
            address,
            port,
            error,
        )
        return None


def serve(
    port: int,
    health: Callable[[], str],
    address: str = DEFAULT_ADDRESS,
    registry: prometheus_client.CollectorRegistry | None = None,
    forever: bool = False,
) -> _Server:
    """Serves /metrics and /health on ``address:port`` from a daemon thread; returns the server.
    ``forever``: never shut down, so its thread sleeps until a request comes (a poll every half
    second wakes a gevent process at a measurable cost, each child's under the supervisor)."""
    server: _Server = wsgiref.simple_server.make_server(
        address, port, application(health, registry), _Server, _QuietHandler
    )
    threading.Thread(
        target=server.serve_forever,
        args=(None if forever else 0.5,),
        name="customer-verification-metrics",
        daemon=True,
    ).start()
    log.info("serving /metrics and /health on %s:%d", address, server.server_port)
    return server
