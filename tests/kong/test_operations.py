"""What an operator sees: problems in Kong's error log at its default level (notice), rate-limited
and without secrets; Prometheus metrics and /health served by the plugin server."""

import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from conftest import ROOT, start_gateway
from prometheus_client.parser import text_string_to_metric_families

from customer_auth.core import v1
from customer_auth.core.options import DEFAULTS
from customer_auth.kong.operator_log import OperatorLog
from customer_verification import Plugin
from devtools.kong_standin import Request, in_process_kong
from devtools.local_ports import free_port

UNREACHABLE = "postgresql://cv:Hunter7Tail9x@127.0.0.1:1/customers"


def signed(certificate_id, client_key):
    return list(v1.signed_headers(certificate_id, client_key).items())


@contextlib.contextmanager
def gateway_on(url, **env):
    """The real plugin server behind the stand-in, on ``url``, for the ``with`` block."""
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": url, "CUSTOMER_VERIFICATION_DB_TIMEOUT": "1", **env},
    )
    try:
        yield gateway
    finally:
        gateway.cleanup()


def operator_lines(gateway):
    """What Kong's error log holds at its default level (notice)."""
    return gateway.kong.error_log.lines()


# -- the rate-limited queue ---------------------------------------------------------------


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def record(message, *args, level=logging.WARNING):
    return logging.LogRecord("customer_verification", level, __file__, 1, message, args, None)


def test_one_line_per_kind_per_interval_saying_how_many_were_left_out():
    clock = Clock()
    log = OperatorLog(interval=10, clock=clock)
    for attempt in range(5):
        log.handle(record("store failed: %s", f"attempt {attempt}"))
    log.handle(record("listener lost (%s)", "x", level=logging.ERROR))
    assert log.take() == (
        "kong.log.warn",
        "customer_verification: store failed: attempt 0 (+4 more like this not logged)",
    )
    assert log.take() == ("kong.log.err", "customer_verification: listener lost (x)")
    assert log.take() is None and not log
    clock.now += 5
    log.handle(record("store failed: %s", "attempt 5"))
    assert not log  # within the interval: counted, not logged
    clock.now += 5
    log.handle(record("store failed: %s", "attempt 6"))
    assert log.take() == (
        "kong.log.warn",
        "customer_verification: store failed: attempt 6 (+1 more like this not logged)",
    )


def test_client_mistakes_logged_at_info_never_reach_the_operator_log():
    log = OperatorLog()
    logging.getLogger("customer_verification").addHandler(log)
    try:
        logging.getLogger("customer_verification").info(
            "rejected with %d: %s", 403, "wrong signature"
        )
    finally:
        logging.getLogger("customer_verification").removeHandler(log)
    assert log.take() is None


# -- through the plugin ---------------------------------------------------------------------


def test_an_unexpected_exception_reaches_kongs_log_once_as_an_error(
    credentials, customers, operator_log
):
    customers.add("cert-1", "key-1")
    plugin = Plugin(dict(DEFAULTS), credentials)
    plugin.credentials.get = lambda certificate_id: 1 / 0
    requests = [Request(signed("cert-1", "key-1")) for _ in range(3)]
    for request in requests:
        plugin.access(in_process_kong(request, lua_style=False))
        assert request.response[0] == 503
    assert requests[0].logs == [
        ("err", ["customer_verification: unexpected ZeroDivisionError while verifying a request"])
    ]
    assert requests[0].pdk_calls == [
        "kong.request.get_headers",
        "kong.log.err",
        "kong.response.exit",
    ]
    assert requests[1].logs == requests[2].logs == []  # rate-limited: one extra round trip, once


def test_verified_requests_cost_no_extra_round_trip_when_nothing_is_wrong(credentials, customers):
    customers.add("cert-1", "key-1")
    request = Request(signed("cert-1", "key-1"))
    Plugin(dict(DEFAULTS), credentials).access(in_process_kong(request, lua_style=False))
    assert request.pdk_calls == [
        "kong.request.get_headers",
        "kong.service.request.set_headers",
        "kong.client.authenticate",
    ]


def test_an_unreachable_store_is_in_kongs_log_at_the_default_level_without_secrets():
    with gateway_on(UNREACHABLE) as gateway:
        statuses = {gateway.send(signed(f"cert-{i}", "key")).status for i in range(300)}
        assert statuses == {503}
        lines = operator_lines(gateway)
        store_lines = [(level, text) for level, text in lines if "answering 503" in text]
        assert store_lines and all(level == "warn" for level, _ in store_lines)
        assert (
            "credential store failed" in store_lines[0][1]
            and "Connection refused" in store_lines[0][1]
        )
        assert len(lines) <= 6, lines  # rate-limited: 300 failing requests, a handful of lines
        assert "Hunter7Tail9x" not in gateway.kong.error_log.text() + gateway.server.log()


def test_client_mistakes_add_no_lines_at_the_default_level(database_url, customers):
    customers.add("cert-1", "key-1")
    with gateway_on(database_url) as gateway:
        for i in range(100):
            assert gateway.send(signed("cert-1", "wrong")).status == 403
            assert gateway.send(signed(f"nobody-{i}", "key")).status == 403
            assert gateway.send([("client-certificate-id", "cert-1")]).status == 400
        assert operator_lines(gateway) == []
        assert "rejected with 403" in gateway.server.log()  # at INFO, for whoever raises the level


def test_an_unknown_log_level_is_said_and_info_used(database_url, customers):
    customers.add("cert-1", "key-1")
    with gateway_on(database_url, CUSTOMER_VERIFICATION_LOG_LEVEL="loud") as gateway:
        assert gateway.send(signed("cert-1", "wrong")).status == 403
        log = gateway.server.log()
        assert (
            "CUSTOMER_VERIFICATION_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR; "
            "logging at INFO" in log
        )
        assert "rejected with 403" in log


def test_the_listener_losing_and_regaining_its_connection_is_in_kongs_log(database_url, customers):
    customers.add("cert-1", "key-1")
    with gateway_on(database_url) as gateway:
        assert gateway.send(signed("cert-1", "key-1")).status == 200
        customers.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'customer_verification listener'"
        )
        deadline = time.monotonic() + 10
        texts = ""
        while "change listener reconnected" not in texts:
            assert time.monotonic() < deadline, texts
            assert gateway.send(signed("cert-1", "key-1")).status == 200
            texts = " ".join(text for _, text in operator_lines(gateway))
            time.sleep(0.1)
        assert "change listener lost its database connection" in texts


def test_a_missing_database_url_is_in_kongs_log():
    """(Malformed URLs: tests/store/test_settings.py, each shape.)"""
    with gateway_on("") as gateway:
        assert gateway.send(signed("cert-1", "key")).status == 503
        texts = [text for level, text in operator_lines(gateway) if level == "warn"]
        assert any("DATABASE_URL is not set" in text for text in texts), texts


# -- metrics and health ---------------------------------------------------------------------


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_metrics_count_every_answer_the_cache_and_the_store(database_url, customers):
    customers.add("cert-1", "key-1")
    port = free_port()
    with gateway_on(database_url, CUSTOMER_VERIFICATION_METRICS_PORT=str(port)) as gateway:
        for _ in range(5):
            assert gateway.send(signed("cert-1", "key-1")).status == 200
        assert gateway.send(signed("cert-1", "wrong")).status == 403
        assert gateway.send(signed("nobody", "key")).status == 403
        assert gateway.send([]).status == 400
        samples = scrape(port)
        requests = {
            labels[0][1]: value
            for (name, labels), value in samples.items()
            if name == "customer_verification_requests_total"
        }
        assert requests == {
            "verified": 5,
            "malformed": 1,
            "unverified": 2,
            "too_large": 0,
            "unavailable": 0,
            "error": 0,
            "anonymous": 0,
            "skipped": 0,
        }
        cache = {
            labels[0][1]: value
            for (name, labels), value in samples.items()
            if name == "customer_verification_cache_lookups_total"
        }
        assert cache["miss"] == 2 and cache["hit"] >= 4 and cache["stale"] == 0  # cert-1 and nobody
        assert samples[("customer_verification_store_lookup_seconds_count", ())] >= 2
        assert samples[("customer_verification_store_lookups_failed_total", ())] == 0
        assert samples[("customer_verification_listener_connected", ())] == 1
        assert samples[("customer_verification_pool_connections_in_use", ())] == 0
        # No label takes a client's value: a thousand certificate ids later, the same series.
        for i in range(50):
            gateway.send(signed(f"random-{i}", "key"))
        assert set(scrape(port)) == set(samples)


def test_health_is_ok_with_the_store_and_503_without_store_or_cache(database_url):
    port = free_port()
    with gateway_on(database_url, CUSTOMER_VERIFICATION_METRICS_PORT=str(port)):
        status, body = health(port)
        assert (status, body) == (200, {"status": "up"})
    with gateway_on(UNREACHABLE, CUSTOMER_VERIFICATION_METRICS_PORT=str(port)):
        status, body = health(port)
        # nothing about the database: not its host nor role
        assert (status, body) == (
            503,
            {"status": "down"},
        )
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).status == 200


def test_health_stays_ok_while_cached_customers_can_be_served(database_url, customers, table_gone):
    customers.add("cert-1", "key-1")
    port = free_port()
    with gateway_on(database_url, CUSTOMER_VERIFICATION_METRICS_PORT=str(port)) as gateway:
        gateway.kong.configure("plugin", {"cache_ttl": 0, "stale_ttl": 300})
        assert gateway.send(signed("cert-1", "key-1")).status == 200
        with table_gone:
            assert gateway.send(signed("cert-1", "key-1")).status == 200  # from the stale window
            status, body = health(port)
            assert (status, body) == (200, {"status": "degraded"})
        assert (
            scrape(port)[("customer_verification_cache_lookups_total", (("result", "stale"),))] == 1
        )


def test_without_a_port_nothing_listens(database_url):
    with gateway_on(database_url) as gateway:
        assert "serving /metrics" not in gateway.server.log()


def test_the_metrics_listener_binds_loopback_unless_told_otherwise(monkeypatch):
    from customer_auth import metrics

    monkeypatch.setenv("CUSTOMER_VERIFICATION_METRICS_PORT", "0")
    monkeypatch.delenv("CUSTOMER_VERIFICATION_METRICS_ADDRESS", raising=False)
    server = metrics.serve_from_environment(lambda: "up")
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()


def test_idle_connections_to_the_metrics_port_cannot_starve_the_plugin(database_url, customers):
    from customer_auth import metrics

    customers.add("cert-1", "key-1")
    port = free_port()
    with gateway_on(database_url, CUSTOMER_VERIFICATION_METRICS_PORT=str(port)) as gateway:
        assert health(port) == (200, {"status": "up"})
        descriptors = len(os.listdir(f"/proc/{gateway.server.process.pid}/fd"))
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        try:
            time.sleep(0.5)
            held = len(os.listdir(f"/proc/{gateway.server.process.pid}/fd"))
            assert held <= descriptors + metrics.MAX_CONNECTIONS + 2, (descriptors, held)
            assert gateway.send(signed("cert-1", "key-1")).status == 200
            time.sleep(metrics.CONNECTION_TIMEOUT + 1)  # the silent ones are dropped
            assert health(port) == (200, {"status": "up"})
        finally:
            for connection in idle:
                connection.close()
        assert "Traceback" not in gateway.server.log()


def test_clients_sending_a_byte_at_a_time_cannot_keep_health_refused(monkeypatch):
    from customer_auth import metrics

    monkeypatch.setattr(metrics, "REQUEST_DEADLINE", 1.0)
    server = metrics.serve(0, lambda: "up")
    port = server.server_port
    stop = threading.Event()

    def drip():
        with socket.create_connection(("127.0.0.1", port)) as connection:
            for byte in itertools.cycle(b"GET /health HTTP/1.1\r\nX: "):
                if stop.wait(0.3):
                    return
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    return  # cut at its deadline

    drippers = [threading.Thread(target=drip) for _ in range(metrics.MAX_CONNECTIONS)]
    for dripper in drippers:
        dripper.start()
    try:
        time.sleep(0.3)
        started = time.monotonic()
        while True:  # a liveness probe, retried
            try:
                assert health(port) == (200, {"status": "up"})
                break
            except (OSError, AssertionError, ValueError):
                assert time.monotonic() - started < 3, "health stayed refused"
                time.sleep(0.2)
    finally:
        stop.set()
        for dripper in drippers:
            dripper.join()
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_operations_pages_commands_show_health_and_requests(database_url, customers, tmp_path):
    """docs/operations.md's opening commands, run as shown on the metrics port (the page's 9542
    is the compose kit's; the test's server gets a free one)."""
    from conftest import fenced_block, run_in_bash

    commands = fenced_block("operations.md", "Ask the plugin server how it is")
    assert commands.count("127.0.0.1:9542") == 2
    customers.add("cert-1", "key-1")
    port = free_port()
    with gateway_on(database_url, CUSTOMER_VERIFICATION_METRICS_PORT=str(port)) as gateway:
        assert gateway.send(signed("cert-1", "key-1")).status == 200
        shown = run_in_bash(commands.replace("9542", str(port)), tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith('{"status": "up"}')
    assert 'customer_verification_requests_total{outcome="verified"} 1.0' in shown.stdout
