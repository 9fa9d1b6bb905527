"""Kong consumers: every verified request is authenticated in Kong (credential, and the mapped
consumer), identity headers are set or cleared as Kong's auth plugins do, `anonymous` gives
Kong's logical OR, and the fail-closed rule holds; through the real plugin server."""

import time
import uuid

import pytest
from conftest import ROOT, start_gateway

from customer_auth.core import v1
from devtools.kong_standin import FailClosedRule, Request

FORGED = [
    ("X-Consumer-ID", "forged"),
    ("X-Consumer-Username", "forged"),
    ("X-Consumer-Custom-ID", "forged"),
    ("X-Credential-Identifier", "forged"),
    ("X-Anonymous-Consumer", "true"),
    ("X-Customer-Id", "forged"),
]
ANONYMOUS = {"id": str(uuid.uuid4()), "username": "anonymous-users"}


@pytest.fixture(scope="module")
def gateway(database_url):
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": database_url},
        fail_closed=FailClosedRule(),
    )
    yield gateway
    gateway.cleanup()


@pytest.fixture
def kong_consumers(gateway, customers):
    alice = customers.add("alice-cert", "alice-key")
    bob = customers.add("bob-cert", "bob-key")
    gateway.kong.consumers = [
        {"id": str(uuid.uuid4()), "username": "alice-cert", "custom_id": "crm-17"},
        {"id": bob, "username": "bob-by-id"},  # mapped by the customer's uuid
        ANONYMOUS,
    ]
    return {"alice": alice, "bob": bob}


def send(gateway, plugin_id, certificate_id, client_key, extra=(), **request):
    lines = list(v1.signed_headers(certificate_id, client_key).items()) + list(extra)
    return gateway.kong.handle(Request(lines, **request), plugin_id)


def test_a_verified_request_is_authenticated_in_kong_by_its_credential(gateway, kong_consumers):
    gateway.kong.configure("plain")
    request = Request(list(v1.signed_headers("alice-cert", "alice-key").items()) + FORGED)
    outcome = gateway.kong.handle(request, "plain")
    assert (
        outcome.status == 200
        and request.credential == {"id": kong_consumers["alice"]}
        and request.consumer is None
    )
    upstream = outcome.upstream
    assert (
        upstream["x-customer-id"]
        == upstream["x-credential-identifier"]
        == [kong_consumers["alice"]]
    )
    for forged in (
        "x-consumer-id",
        "x-consumer-username",
        "x-consumer-custom-id",
        "x-anonymous-consumer",
    ):
        assert forged not in upstream  # cleared: a client can never supply them


@pytest.mark.parametrize("consumer_by", [["username"], ["id", "username"]])
def test_customers_map_to_kong_consumers_by_username_or_id(gateway, kong_consumers, consumer_by):
    plugin_id = "map-" + "-".join(consumer_by)
    gateway.kong.configure(plugin_id, {"consumer_by": consumer_by, "consumer_optional": True})
    alice_request = Request(list(v1.signed_headers("alice-cert", "alice-key").items()) + FORGED)
    alice = gateway.kong.handle(alice_request, plugin_id)
    assert (
        alice_request.consumer["username"] == "alice-cert"
        and alice_request.credential["id"] == kong_consumers["alice"]
    )
    assert alice.upstream["x-consumer-username"] == ["alice-cert"] and alice.upstream[
        "x-consumer-custom-id"
    ] == ["crm-17"]
    bob = send(gateway, plugin_id, "bob-cert", "bob-key")
    assert bob.upstream.get("x-consumer-id") == (
        [kong_consumers["bob"]] if "id" in consumer_by else None
    )


def test_a_cached_customer_costs_no_consumer_lookup(gateway, kong_consumers):
    gateway.kong.configure("cached", {"consumer_by": ["username"]})
    first = send(gateway, "cached", "alice-cert", "alice-key")
    again = send(gateway, "cached", "alice-cert", "alice-key")
    assert (first.round_trips, again.round_trips) == (5, 4)  # load_consumer once, then remembered


def test_a_verified_customer_without_a_consumer_gets_403_and_an_operator_line(
    gateway, kong_consumers, customers
):
    customers.add("carol-cert", "carol-key")
    gateway.kong.configure("strict", {"consumer_by": ["username"]})
    outcome = send(gateway, "strict", "carol-cert", "carol-key")
    assert (outcome.status, outcome.upstream) == (403, None)
    assert any(
        "has no Kong consumer" in text and level == "warn"
        for level, text in gateway.kong.error_log.lines()
    )
    gateway.kong.configure("optional", {"consumer_by": ["username"], "consumer_optional": True})
    assert send(gateway, "optional", "carol-cert", "carol-key").status == 200


def test_a_customer_revoked_while_its_consumer_stays_is_refused(gateway, kong_consumers, customers):
    gateway.kong.configure("revoked", {"consumer_by": ["username"], "cache_ttl": 0})
    assert send(gateway, "revoked", "alice-cert", "alice-key").status == 200
    customers.set_authentication("alice-cert", revoked_at=time.time())
    assert send(gateway, "revoked", "alice-cert", "alice-key").status == 403


def test_anonymous_lets_failed_checks_in_as_the_anonymous_consumer(gateway, kong_consumers):
    gateway.kong.configure("anon", {"anonymous": ANONYMOUS["username"]})
    for lines in ([], list(v1.signed_headers("alice-cert", "wrong").items())):
        request = Request(lines + FORGED)
        outcome = gateway.kong.handle(request, "anon")
        assert (
            outcome.status == 200 and request.consumer == ANONYMOUS and request.credential is None
        )
        assert outcome.upstream["x-anonymous-consumer"] == ["true"]
        assert outcome.upstream["x-consumer-username"] == ["anonymous-users"]
        assert (
            "x-customer-id" not in outcome.upstream
            and "x-credential-identifier" not in outcome.upstream
        )
    verified = send(gateway, "anon", "alice-cert", "alice-key")
    assert (
        verified.upstream["x-customer-id"] == [kong_consumers["alice"]]
        and "x-anonymous-consumer" not in verified.upstream
    )


def test_a_request_another_auth_plugin_authenticated_is_left_alone(gateway, kong_consumers):
    gateway.kong.configure("or", {"anonymous": ANONYMOUS["id"]})
    request = Request([("X-Consumer-Username", "set-by-key-auth")])
    request.credential = {"id": "key-auth-credential"}  # key-auth ran first
    outcome = gateway.kong.handle(request, "or")
    # HandleEvent, get_headers, get_credential
    assert outcome.status == 200 and outcome.round_trips == 3
    assert outcome.upstream["x-consumer-username"] == ["set-by-key-auth"]


def test_a_failing_store_is_never_turned_into_anonymous_access(database_url, kong_consumers):
    broken = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
            "CUSTOMER_VERIFICATION_DB_TIMEOUT": "1",
        },
        config={"anonymous": ANONYMOUS["username"]},
        fail_closed=FailClosedRule(),
    )
    try:
        broken.kong.consumers = [ANONYMOUS]
        outcome = broken.send(list(v1.signed_headers("alice-cert", "alice-key").items()))
        assert (outcome.status, outcome.upstream) == (503, None)
    finally:
        broken.cleanup()


def test_an_anonymous_that_names_no_consumer_is_kongs_500_and_a_log_line(gateway, kong_consumers):
    gateway.kong.configure("bad-anon", {"anonymous": "nobody-by-that-name"})
    outcome = gateway.kong.handle(Request([]), "bad-anon")
    assert (outcome.status, outcome.message, outcome.upstream) == (
        500,
        "An unexpected error occurred",
        None,
    )
    assert any(
        "anonymous consumer 'nobody-by-that-name' does not exist" in text
        for level, text in gateway.kong.error_log.lines()
        if level == "error"
    )


def test_the_fail_closed_rule_still_answers_503_with_the_plugin_server_down(
    database_url, kong_consumers
):
    down = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": database_url},
        config={"anonymous": ANONYMOUS["username"]},
        fail_closed=FailClosedRule(),
    )
    try:
        down.kong.consumers = [ANONYMOUS]
        assert down.send([]).status == 200  # anonymous, where it is configured
        down.server.stop()
        outcome = down.send(list(v1.signed_headers("alice-cert", "alice-key").items()) + FORGED)
        assert (outcome.status, outcome.upstream) == (503, None)
    finally:
        down.cleanup()


def test_preflight_requests_pass_only_when_run_on_preflight_is_off(gateway, kong_consumers):
    preflight = dict(method="OPTIONS")
    lines = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")]
    gateway.kong.configure("preflight-off", {"run_on_preflight": False})
    gateway.kong.configure("preflight-on")
    assert gateway.kong.handle(Request(lines, **preflight), "preflight-on").status == 400
    passed = gateway.kong.handle(Request(lines, **preflight), "preflight-off")
    assert passed.status == 200 and passed.upstream is not None
    # Other requests pay nothing for it: no get_method without a preflight header.
    assert send(gateway, "preflight-off", "alice-cert", "alice-key").round_trips == 4


def test_kong_raises_when_authenticate_gets_neither_consumer_nor_credential():
    request = Request([])
    from devtools.kong_standin import KongRaised, in_process_kong

    with pytest.raises(KongRaised):
        in_process_kong(request, lua_style=False).client.authenticate(None, None)
    with pytest.raises(KongRaised):
        in_process_kong(request, lua_style=False).client.load_consumer("not-a-uuid", False)
    assert (
        in_process_kong(request, lua_style=False).client.load_consumer(str(uuid.uuid4()), False)
        is None
    )


def test_a_certificate_id_that_is_another_consumers_id_does_not_land_on_that_consumer(
    gateway, customers
):
    admin_consumer = {"id": str(uuid.uuid4()), "username": "admins"}
    customers.add(admin_consumer["id"], "key-1")  # a customer whose certificate id is that uuid
    gateway.kong.consumers = [admin_consumer]
    gateway.kong.configure("by-username", {"consumer_by": ["username"]})
    request = Request(list(v1.signed_headers(admin_consumer["id"], "key-1").items()))
    outcome = gateway.kong.handle(request, "by-username")
    assert outcome.status == 403 and request.consumer is None
    gateway.kong.configure(
        "by-username-optional", {"consumer_by": ["username"], "consumer_optional": True}
    )
    request = Request(list(v1.signed_headers(admin_consumer["id"], "key-1").items()))
    assert (
        gateway.kong.handle(request, "by-username-optional").status == 200
        and request.consumer is None
    )


def test_a_preflight_let_through_unauthenticated_carries_no_forged_identity(gateway):
    gateway.kong.configure("no-preflight", {"run_on_preflight": False})
    outcome = gateway.send(
        [("Access-Control-Request-Method", "POST"), *FORGED], "no-preflight", method="OPTIONS"
    )
    assert outcome.status == 200
    assert not {name.lower() for name, _ in FORGED} & set(outcome.upstream)
