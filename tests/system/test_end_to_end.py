"""The real plugin server process behind the Kong stand-in, against a real Postgres, in the shipped
mode (gevent, Python-style returns) and in kong-pdk's defaults (threads, Lua-style returns)."""

import concurrent.futures
import time

import pytest
from conftest import ROOT, start_gateway

from customer_auth.core import v1

KEY = "e2e-key"


def signed(certificate_id="cert-e2e", client_key=KEY, now=None):
    return list(v1.signed_headers(certificate_id, client_key, now).items())


@pytest.fixture
def customer_id(customers):
    return customers.add("cert-e2e", KEY)


def test_verified_request_reaches_upstream_with_only_the_verified_customer_id(gateway, customer_id):
    outcome = gateway.send(signed() + [("X-Customer-Id", "forged")])
    assert outcome.status == 200 and not outcome.errors
    assert outcome.upstream["x-customer-id"] == [customer_id]
    assert outcome.upstream[v1.SIGNATURE_HEADER]  # forwarded unless hide_credentials
    assert outcome.round_trips == 4  # HandleEvent, get_headers, authenticate, set_headers


@pytest.mark.parametrize(
    "header_lines, status",
    [
        ([], 400),
        (signed()[:2], 400),
        (signed() + [(v1.REQUEST_TIME_HEADER, "1")], 400),
        ([(n, "12.5" if n == v1.REQUEST_TIME_HEADER else v) for n, v in signed()], 400),
        ([(n, "xyz" if n == v1.SIGNATURE_HEADER else v) for n, v in signed()], 400),
        (signed("cert-nobody"), 403),
        (signed(client_key="wrong"), 403),
        (signed(now=time.time() - 3600), 403),
    ],
    ids=[
        "no headers",
        "no signature",
        "time twice",
        "time not integer",
        "signature not hex",
        "unknown certificate",
        "wrong signature",
        "stale time",
    ],
)
def test_rejections_are_answered_by_the_plugin_in_two_round_trips(
    gateway, customer_id, header_lines, status
):
    outcome = gateway.send(header_lines + [("X-Customer-Id", "forged")])
    assert outcome.status == status and outcome.message and outcome.upstream is None
    assert outcome.round_trips == 2 and not outcome.errors


def test_store_unreachable_is_503(server_mode, customer_id):
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        server_mode,
        env={
            "DATABASE_URL": "postgresql://plugin:hunter2@127.0.0.1:1/none",
            "CUSTOMER_VERIFICATION_DB_TIMEOUT": "1",
        },
    )
    try:
        outcome = gateway.send(signed())
        assert (outcome.status, outcome.upstream) == (503, None)
        assert "hunter2" not in gateway.server.log()
        assert "credential store failed" in gateway.server.log()
    finally:
        gateway.cleanup()


def test_config_change_starts_a_new_instance(gateway, customer_id):
    assert v1.SIGNATURE_HEADER in gateway.send(signed()).upstream
    gateway.kong.configure("plugin", {"hide_credentials": True})
    outcome = gateway.send(signed())
    assert outcome.upstream["x-customer-id"] == [customer_id]
    assert v1.SIGNATURE_HEADER not in outcome.upstream
    assert outcome.round_trips == 4  # HandleEvent, get_headers, authenticate, set_headers


def test_killed_server_fails_open_in_kong_and_recovers_after_restart(gateway, customer_id):
    """What Kong itself does when the plugin server is down: the deployment kit's fail-closed
    rule (docs/getting-started.md) exists because of the first assertion."""
    assert gateway.send(signed()).status == 200
    gateway.server.stop(kill=True)
    down = gateway.send([("X-Customer-Id", "forged")])
    assert down.upstream["x-customer-id"] == ["forged"] and down.errors
    gateway.server.start()
    again = gateway.send(signed())
    assert again.upstream["x-customer-id"] == [customer_id]
    assert gateway.send([]).status == 400


def test_concurrent_requests_on_many_connections(gateway, customers, customer_id):
    ids = {f"cert-c{i}": customers.add(f"cert-c{i}", f"key-{i}") for i in range(20)}

    def one(i):
        certificate_id = f"cert-c{i % 20}"
        if i % 3 == 0:
            return gateway.send(signed(certificate_id, "wrong")).status == 403
        outcome = gateway.send(signed(certificate_id, f"key-{i % 20}"))
        return outcome.upstream["x-customer-id"] == [ids[certificate_id]]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        assert all(pool.map(one, range(600)))


def test_ten_thousand_rejections_leave_threads_descriptors_and_memory_bounded(gateway, customer_id):
    def reject(i):
        return gateway.send(signed(client_key="wrong") if i % 2 else []).status

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert set(pool.map(reject, range(500))) == {400, 403}  # warm up
        threads, rss, fds = (
            gateway.server.threads(),
            gateway.server.rss_kib(),
            gateway.server.file_descriptors(),
        )
        assert set(pool.map(reject, range(10_000))) == {400, 403}
    time.sleep(0.5)
    assert gateway.server.threads() <= threads + 4
    # the stand-in's pool keeps at most 16 connections busy
    assert gateway.server.file_descriptors() <= fds
    # Leaking one handler per request costs several KiB each: 10,000 would add tens of MiB.
    assert gateway.server.rss_kib() - rss < 15 * 1024
