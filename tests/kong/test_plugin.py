"""The plugin's access handler against a fake kong that behaves as Kong does (kong_standin.Request
behind kong-pdk's own bridge), and a real Postgres."""

import json
import logging
import time

import gevent
import pytest
from conftest import ROOT, start_gateway

from customer_auth.core import v1
from customer_auth.core.options import DEFAULTS
from customer_verification import Plugin, Schema, priority, version
from devtools.kong_standin import Request, in_process_kong, round_trips

KEY = "k3y-0f-cert-1"


@pytest.fixture(params=[True, False], ids=["lua-style", "no-lua-style"])
def lua_style(request):
    return request.param


@pytest.fixture
def customer_id(customers):
    return customers.add("cert-1", KEY)


@pytest.fixture
def plugin(credentials):
    return Plugin(dict(DEFAULTS), credentials)


def signed(certificate_id="cert-1", client_key=KEY, now=None, **extra):
    return list(v1.signed_headers(certificate_id, client_key, now).items()) + list(extra.items())


def run(plugin, header_lines, lua_style=True):
    request = Request(header_lines)
    plugin.access(in_process_kong(request, lua_style))
    return request


def answer(request):
    status, body = request.response
    return status, json.loads(body)["message"]


def test_contract_at_a_glance():
    assert version and 1000 <= priority <= 1450 and priority > 950
    names = [name for field in Schema for name in field]
    assert {
        "clock_skew",
        "cache_ttl",
        "negative_cache_ttl",
        "stale_ttl",
        "hide_credentials",
        "customer_id_header",
    } <= set(names)
    for field in Schema:
        for spec in field.values():
            assert "type" in spec and "default" in spec


def test_verified_request_reaches_upstream_with_customer_id_in_four_round_trips(
    plugin, customer_id, lua_style
):
    request = run(plugin, signed(), lua_style)
    assert request.response is None
    assert request.upstream["x-customer-id"] == [customer_id]
    assert request.pdk_calls == [
        "kong.request.get_headers",
        "kong.service.request.set_headers",
        "kong.client.authenticate",
    ]
    assert round_trips(request) == 4


def test_signature_hex_is_case_insensitive(plugin, customer_id):
    lines = [
        (name, value.upper() if name == v1.SIGNATURE_HEADER else value) for name, value in signed()
    ]
    assert run(plugin, lines).upstream["x-customer-id"] == [customer_id]


def test_spoofed_customer_id_never_reaches_upstream(plugin, customer_id):
    request = run(
        plugin, signed() + [("X-Customer-Id", "someone-else"), ("x-customer-id", "another")]
    )
    assert request.upstream["x-customer-id"] == [customer_id]


def test_credentials_forwarded_by_default_and_hidden_on_request(credentials, customer_id):
    shown = run(Plugin(dict(DEFAULTS), credentials), signed())
    assert v1.SIGNATURE_HEADER in shown.upstream
    hidden = run(Plugin({**DEFAULTS, "hide_credentials": True}, credentials), signed())
    assert not {
        v1.CERTIFICATE_ID_HEADER,
        v1.REQUEST_TIME_HEADER,
        v1.SIGNATURE_HEADER,
    } & set(hidden.upstream)
    assert hidden.upstream["x-customer-id"] == [customer_id]
    assert round_trips(hidden) == 4


def test_configured_header_names(credentials, customer_id):
    config = {**DEFAULTS, "certificate_id_header": "X-Cert", "customer_id_header": "X-Client"}
    lines = [
        ("X-Cert" if name == v1.CERTIFICATE_ID_HEADER else name, value) for name, value in signed()
    ]
    request = run(Plugin(config, credentials), lines)
    assert request.upstream["x-client"] == [customer_id]


def without(lines, header):
    return [(name, value) for name, value in lines if name != header]


def replaced(lines, header, value):
    return without(lines, header) + [(header, value)]


BAD_REQUESTS = {
    "no certificate id": lambda: without(signed(), v1.CERTIFICATE_ID_HEADER),
    "no time": lambda: without(signed(), v1.REQUEST_TIME_HEADER),
    "no signature": lambda: without(signed(), v1.SIGNATURE_HEADER),
    "no headers at all": lambda: [],
    "empty certificate id": lambda: replaced(signed(), v1.CERTIFICATE_ID_HEADER, ""),
    "certificate id twice": lambda: signed() + [(v1.CERTIFICATE_ID_HEADER, "cert-1")],
    "time twice": lambda: signed() + [(v1.REQUEST_TIME_HEADER, "1")],
    "signature twice": lambda: signed() + [(v1.SIGNATURE_HEADER, "a" * 64)],
    "time not an integer": lambda: replaced(signed(), v1.REQUEST_TIME_HEADER, "1700000000.5"),
    "time as a date": lambda: replaced(signed(), v1.REQUEST_TIME_HEADER, "2026-11-22T00:00:00Z"),
    "signature too short": lambda: replaced(signed(), v1.SIGNATURE_HEADER, "ab" * 31),
    "signature not hex": lambda: replaced(signed(), v1.SIGNATURE_HEADER, "zz" * 32),
    "certificate id with a space": lambda: replaced(signed(), v1.CERTIFICATE_ID_HEADER, "cert 1"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_requests_get_400_in_two_round_trips(plugin, customer_id, case, lua_style):
    request = run(plugin, BAD_REQUESTS[case](), lua_style)
    status, message = answer(request)
    assert status == 400 and message
    assert request.upstream is not None and round_trips(request) == 2
    assert request.pdk_calls == ["kong.request.get_headers", "kong.response.exit"]


def test_400_messages_name_the_header(plugin, customer_id):
    assert "client-request-time" in answer(run(plugin, BAD_REQUESTS["no time"]()))[1]
    assert "sent once" in answer(run(plugin, BAD_REQUESTS["signature twice"]()))[1]


UNVERIFIED = {
    "unknown certificate": lambda: signed("cert-unknown"),
    "wrong signature": lambda: signed(client_key="not-the-key"),
    "time too old": lambda: signed(now=time.time() - DEFAULTS["clock_skew"] - 5),
    "time in the future": lambda: signed(now=time.time() + DEFAULTS["clock_skew"] + 5),
}


@pytest.mark.parametrize("case", UNVERIFIED)
def test_unverified_requests_get_one_identical_403(plugin, customer_id, case, lua_style):
    request = run(plugin, UNVERIFIED[case](), lua_style)
    assert answer(request) == (403, "Request signature could not be verified")
    assert round_trips(request) == 2


def test_a_repeated_request_is_recalled_not_hashed_again(plugin, customer_id, monkeypatch):
    lines = signed()
    hashed = []
    digest = v1._digest
    monkeypatch.setattr(v1, "_digest", lambda *args: hashed.append(args) or digest(*args))
    for _ in range(3):
        assert run(plugin, lines).upstream["x-customer-id"] == [customer_id]
    assert len(hashed) == 1
    # The same certificate and time with another signature is checked in full, and refused.
    assert answer(run(plugin, replaced(lines, v1.SIGNATURE_HEADER, "ab" * 32)))[0] == 403
    assert len(hashed) == 2


def test_a_recalled_request_is_refused_once_the_key_changes(plugin, customers, customer_id):
    lines = signed()
    assert run(plugin, lines).response is None
    customers.set_authentication("cert-1", client_key="another-key")
    plugin.credentials.evict("cert-1")  # what the change listener does on the notification
    assert answer(run(plugin, lines))[0] == 403


def test_a_recalled_request_is_refused_once_its_time_leaves_the_clock_skew(
    plugin, customer_id, monkeypatch
):
    lines = signed()
    assert run(plugin, lines).response is None
    later = time.time() + DEFAULTS["clock_skew"] + 2
    monkeypatch.setattr(time, "time", lambda: later)
    assert answer(run(plugin, lines))[0] == 403


def test_reasons_go_to_the_log_and_secrets_do_not(plugin, customer_id, caplog):
    caplog.set_level(logging.DEBUG, logger="customer_verification")
    lines = {case: UNVERIFIED[case]() for case in UNVERIFIED}
    for header_lines in lines.values():
        run(plugin, header_lines)
    text = caplog.text
    assert (
        "unknown or revoked" in text
        and "does not match" in text
        and "behind" in text
        and "ahead" in text
    )
    assert KEY not in text
    for header_lines in lines.values():
        assert dict(header_lines)[v1.SIGNATURE_HEADER] not in text


def test_revoked_customer_is_refused(plugin, customers, customer_id):
    customers.set_authentication("cert-1", revoked_at=time.time())
    assert answer(run(plugin, signed()))[0] == 403


def test_previous_key_works_only_during_its_grace_period(credentials, customers):
    customers.add(
        "cert-r", "new-key", previous_client_key="old-key", previous_key_expires_at=time.time() + 60
    )
    customers.add(
        "cert-x", "new-key", previous_client_key="old-key", previous_key_expires_at=time.time() - 1
    )
    plugin = Plugin(dict(DEFAULTS), credentials)
    assert run(plugin, signed("cert-r", "old-key")).response is None
    assert run(plugin, signed("cert-r", "new-key")).response is None
    assert answer(run(plugin, signed("cert-x", "old-key")))[0] == 403
    assert run(plugin, signed("cert-x", "new-key")).response is None


def test_store_unreachable_without_cache_is_503(customer_id):
    from customer_auth.store.connection import Settings
    from customer_auth.store.credentials import Credentials

    unreachable = Credentials(
        Settings(dsn="postgresql://u:hunter2@127.0.0.1:1/x", pool_size=1, timeout=1)
    )
    request = run(Plugin(dict(DEFAULTS), unreachable), signed())
    assert answer(request) == (503, "Authentication is temporarily unavailable")


def test_cached_customer_keeps_working_in_stale_window_while_store_fails(
    credentials, customer_id, table_gone
):
    plugin = Plugin({**DEFAULTS, "cache_ttl": 0, "stale_ttl": 60}, credentials)
    assert run(plugin, signed()).response is None
    with table_gone:
        assert run(plugin, signed()).upstream["x-customer-id"] == [customer_id]
        assert answer(run(plugin, signed("cert-other")))[0] == 503
    stale_over = Plugin({**DEFAULTS, "cache_ttl": 0, "stale_ttl": 0}, credentials)
    assert run(stale_over, signed()).response is None
    with table_gone:
        assert answer(run(stale_over, signed()))[0] == 503


class FailingRequest(Request):
    def get_headers(self, max_headers=100):
        return None  # Kong 3.9 sends back only the first of a PDK function's ``nil, err``


def test_a_failing_pdk_call_is_answered_not_let_through(plugin, customer_id, lua_style):
    request = FailingRequest(signed())
    plugin.access(in_process_kong(request, lua_style))
    assert answer(request)[0] == 503


def test_nothing_is_called_after_exit_and_a_greenlet_handler_ends_there(plugin, customer_id):
    request = Request([])
    handler = gevent.spawn(plugin.access, in_process_kong(request))
    handler.join(timeout=5)
    assert handler.dead and isinstance(handler.value, gevent.GreenletExit)
    assert request.pdk_calls == ["kong.request.get_headers", "kong.response.exit"]


def test_unknown_config_keys_from_kong_are_ignored(credentials, customer_id):
    plugin = Plugin(
        {**DEFAULTS, "__seq__": 3, "__plugin_id": "abc", "clock_skew": None}, credentials
    )
    assert plugin.config["clock_skew"] == DEFAULTS["clock_skew"]
    assert run(plugin, signed()).response is None


def test_a_refused_config_on_the_socket_starts_no_instance_and_kong_says_why(database_url):
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": database_url},
    )
    try:
        gateway.kong.configure("plugin", {"cache_size": -5})
        outcome = gateway.send([])
        assert (outcome.status, outcome.upstream) == (500, None)  # Kong raises without an instance
        assert any("cache_size: value should be between 1 and" in e for e in outcome.errors)
    finally:
        gateway.cleanup()
