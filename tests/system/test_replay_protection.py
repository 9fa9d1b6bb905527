"""Replay protection (the route option replay_protection): an RFC 9421 nonce is accepted once per
certificate across the cluster, claimed on the primary; in-process against the real Postgres,
through two real plugin server processes as two Kong nodes, with the primary stopped, and in
the WSGI middleware under gunicorn with several workers."""

import concurrent.futures
import json
import logging
import time
import types

import psycopg2
import pytest
import requests
from conftest import ROOT, SCHEMA, Customers, execute, serving, start_gateway
from http_message_signatures.structures import CaseInsensitiveDict
from test_middleware import command

from customer_auth import client
from customer_auth.core.options import DEFAULTS
from customer_auth.errors import StoreUnavailable
from customer_auth.store import nonces
from customer_auth.store.connection import Settings
from customer_auth.store.credentials import Credentials
from customer_verification import Plugin
from devtools.kong_standin import Request, in_process_kong
from devtools.tcp_proxy import FreezableProxy
from devtools.throwaway_postgres import ThrowawayPostgres

SECRET = "k3y-of-cert-1"
PROTECTED = {**DEFAULTS, "replay_protection": True}


def signed_post(nonce=True, body=b'{"pay": 10}', certificate_id="cert-1", key=SECRET):
    """The stand-in's Request arguments of a POST signed by the package's client."""
    message = types.SimpleNamespace(
        method="POST",
        url="http://api.test/payments?x=1",
        headers=CaseInsensitiveDict({"Content-Length": str(len(body))}),
    )
    client.sign_message(
        message,
        certificate_id,
        client_key=key,
        body=body,
        nonce=nonce,
        covered_components=("@method", "@path", "@query"),
    )
    return dict(
        header_lines=[("Host", "api.test"), *message.headers.items()],
        method="POST",
        target="/payments?x=1",
        body=body,
    )


def run(plugin, request_arguments):
    request = Request(**request_arguments)
    plugin.access(in_process_kong(request, lua_style=False))
    return request


def answer(request):
    if request.response is None:
        return 200, request.upstream["x-customer-id"][0]
    return request.response[0], json.loads(request.response[1])["message"]


@pytest.fixture
def keyed(customers):
    customers.execute("DELETE FROM customer_nonce")
    return customers.add("cert-1", SECRET)


def test_a_request_sent_twice_is_accepted_once(credentials, keyed, caplog):
    caplog.set_level(logging.INFO, "customer_verification")
    plugin = Plugin(PROTECTED, credentials)
    request = signed_post()
    assert answer(run(plugin, request)) == (200, keyed)
    # the usual message
    assert answer(run(plugin, request)) == (
        403,
        "Request signature could not be verified",
    )
    assert "replayed" in caplog.text
    assert answer(run(plugin, signed_post())) == (200, keyed)  # a new nonce is a new request


def test_an_unprotected_route_accepts_the_same_request_again(credentials, keyed):
    plugin = Plugin(DEFAULTS, credentials)
    request = signed_post()
    assert [answer(run(plugin, request))[0] for _ in range(3)] == [200, 200, 200]


def test_a_replay_is_refused_by_another_node_and_after_a_restart(database_url, keyed):
    request = signed_post()
    first = Credentials(Settings(dsn=database_url, pool_size=2, timeout=2.0))
    assert answer(run(Plugin(PROTECTED, first), request))[0] == 200
    first.close()
    # nothing in memory
    restarted = Credentials(Settings(dsn=database_url, pool_size=2, timeout=2.0))
    try:
        assert answer(run(Plugin(PROTECTED, restarted), request))[0] == 403
        assert restarted.nonces.claims == 1  # the primary said so
    finally:
        restarted.close()


def test_a_duplicate_seen_here_is_refused_without_a_database_round_trip(credentials, keyed):
    plugin = Plugin(PROTECTED, credentials)
    request = signed_post()
    run(plugin, request)
    claims = credentials.nonces.claims
    assert answer(run(plugin, request))[0] == 403 and credentials.nonces.claims == claims


def test_a_signature_without_a_nonce_is_told_what_to_sign(credentials, keyed):
    request = run(Plugin(PROTECTED, credentials), signed_post(nonce=False))
    status, message = answer(request)
    assert status == 400 and "has no nonce" in message
    assert request.response_headers["Accept-Signature"].endswith(";created;keyid;nonce")
    short = answer(run(Plugin(PROTECTED, credentials), signed_post(nonce="abc")))
    assert short[0] == 400 and "nonce that is not a string of 16 to 128 characters" in short[1]


def test_v1_requests_get_400_on_a_protected_route(credentials, keyed):
    from customer_auth.core import v1

    request = run(
        Plugin(PROTECTED, credentials),
        dict(header_lines=list(v1.signed_headers("cert-1", SECRET).items())),
    )
    assert answer(request) == (
        400,
        "This route requires HTTP Message Signatures (RFC 9421) with a nonce",
    )
    assert request.response_headers["Accept-Signature"].endswith(";nonce")


def test_a_forged_or_altered_request_burns_no_nonce(credentials, keyed):
    plugin = Plugin(PROTECTED, credentials)
    request = signed_post()
    altered = dict(request, body=b'{"pay": 99}')
    assert answer(run(plugin, altered))[0] == 403  # the digest does not match: nothing claimed
    assert answer(run(plugin, request))[0] == 200


def test_a_flood_of_fresh_nonces_stays_bounded_and_evicts_no_customer(credentials, keyed):
    store = nonces.NonceStore(credentials.store.settings, max_remembered=100)
    now = time.time()
    for number in range(2000):
        assert store.claim("cert-1", f"flood-{number:012d}", now + 300)
    assert len(store.seen) == 100
    store.close()
    plugin = Plugin(PROTECTED, credentials)
    run(plugin, signed_post())
    queries = credentials.store.queries
    # still cached
    assert answer(run(plugin, signed_post()))[0] == 200 and credentials.store.queries == queries


def test_each_protected_request_costs_one_statement_on_the_primary_and_nothing_more(
    credentials, keyed
):
    plugin = Plugin(PROTECTED, credentials)
    run(plugin, signed_post())  # the customer is cached from here on
    claims, lookups = credentials.nonces.claims, credentials.store.queries
    assert [answer(run(plugin, signed_post()))[0] for _ in range(5)] == [200] * 5
    assert (credentials.nonces.claims - claims, credentials.store.queries - lookups) == (5, 0)


def test_claims_expire_old_rows_so_the_table_needs_no_cron(credentials, keyed):
    old = Customers(credentials.store.settings.dsn)  # as the table's owner
    old.execute(
        "INSERT INTO customer_nonce SELECT 'old', 'n-' || n, now() - interval '1 hour' "
        "FROM generate_series(1, 10) n"
    )
    for number in range(5):
        credentials.nonces.claim("cert-1", f"fresh-{number:010d}", time.time() + 300)
    # two a claim
    assert old.execute("SELECT count(*) FROM customer_nonce WHERE certificate = 'old'") == [(0,)]
    assert old.execute("SELECT count(*) FROM customer_nonce") == [(5,)]  # nothing else is stored
    old.conn.close()


def test_the_roles_may_claim_nonces_and_nothing_more(database_url, keyed):
    execute(
        database_url,
        """DO $$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cv_plugin') THEN
            CREATE ROLE cv_plugin LOGIN PASSWORD 'plugin-pw'
                IN ROLE customer_reader, customer_nonce_claimer;
        END IF; END $$""",
    )
    plugin_dsn = psycopg2.extensions.make_dsn(database_url, user="cv_plugin", password="plugin-pw")
    conn = psycopg2.connect(plugin_dsn)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT customer_nonce_claim('cert-1', 'role-test-nonce-1', %s, 'token')",
            (time.time() + 60,),
        )
        assert cursor.fetchone() == (True,)
        for statement in (
            "SELECT * FROM customer_nonce",
            "DELETE FROM customer_nonce",
            "INSERT INTO customer_nonce VALUES ('a', 'b', now())",
            "UPDATE customer SET certificate = 'x'",
            "INSERT INTO customer (certificate, authentication) VALUES ('x', '{}')",
        ):
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute(statement)
    conn.close()


def test_a_claim_whose_answer_was_lost_after_its_commit_finds_its_own_row(database_url, keyed):
    params = psycopg2.extensions.parse_dsn(database_url)
    proxy = FreezableProxy(params["host"], int(params["port"]))
    url = psycopg2.extensions.make_dsn(database_url, host="127.0.0.1", port=proxy.port)
    store = nonces.NonceStore(Settings(dsn=url, pool_size=2, timeout=5))
    try:
        assert store.claim("cert-1", "warm-up-nonce-0001", time.time() + 60)  # a pooled connection
        proxy.lose_next_reply()  # the next claim commits, and its answer never arrives
        assert store.claim("cert-1", "lost-answer-nonce-1", time.time() + 60)  # sent again: its own
        assert store.claims == 2
        # and the nonce is spent, for this node and any other
        assert not store.claim("cert-1", "lost-answer-nonce-1", time.time() + 60)
        other_node = nonces.NonceStore(Settings(dsn=database_url, pool_size=1, timeout=5))
        assert not other_node.claim("cert-1", "lost-answer-nonce-1", time.time() + 60)
        other_node.close()
    finally:
        store.close()
        proxy.close()


def test_the_primary_unreachable_is_503_on_a_protected_route(keyed):
    unreachable = Credentials(
        Settings(dsn="postgresql://u:hunter2@127.0.0.1:1/x", pool_size=1, timeout=1)
    )
    nonce_store = unreachable.nonces
    with pytest.raises(StoreUnavailable):
        nonce_store.claim("cert-1", "a-nonce-of-16-chars", time.time() + 60)
    unreachable.close()


# -- two Kong nodes ---------------------------------------------------------------------------


@pytest.fixture
def two_nodes(database_url, keyed):
    nodes = [
        start_gateway(
            ROOT / "customer_verification.py",
            "customer_verification",
            env={"DATABASE_URL": database_url},
            config={"replay_protection": True},
        )
        for _ in range(2)
    ]
    for node in nodes:
        assert node.send([]).status == 400  # the instances have started
    yield nodes
    for node in nodes:
        node.cleanup()


def test_a_request_sent_to_two_nodes_at_the_same_moment_gets_exactly_one_2xx(two_nodes):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for _ in range(40):
            request = signed_post()
            statuses = sorted(
                pool.map(
                    lambda node, request=request: (
                        node.kong.handle(Request(**request), "plugin").status
                    ),
                    two_nodes + two_nodes,
                )
            )
            assert statuses == [200, 403, 403, 403], statuses


def test_a_replay_after_a_node_restarts_is_refused(two_nodes):
    request = signed_post()
    node = two_nodes[0]
    assert node.kong.handle(Request(**request), "plugin").status == 200
    node.server.stop()
    node.server.start()
    assert node.kong.handle(Request(**request), "plugin").status == 403


# -- the primary down: protected routes closed, the others served from the standby --------------


def test_with_the_primary_down_protected_routes_get_503_and_the_others_keep_working():
    primary = ThrowawayPostgres(extra_options="-c full_page_writes=on").start()
    execute(primary.dsn, SCHEMA)
    customers = Customers(primary.dsn)
    customers.add("cert-1", SECRET)
    standby = primary.standby()
    node = None
    try:
        url = f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/postgres"
        node = start_gateway(
            ROOT / "customer_verification.py",
            "customer_verification",
            env={"DATABASE_URL": url, "CUSTOMER_VERIFICATION_DB_TIMEOUT": "1"},
            config={"cache_ttl": 0, "negative_cache_ttl": 0, "stale_ttl": 0},
        )
        node.kong.configure(
            "protected",
            {"replay_protection": True, "cache_ttl": 0, "negative_cache_ttl": 0, "stale_ttl": 0},
        )
        deadline = time.monotonic() + 10
        # Until the standby has replayed.
        while node.kong.handle(Request(**signed_post()), "plugin").status != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert node.kong.handle(Request(**signed_post()), "protected").status == 200
        primary.stop()
        protected = node.kong.handle(Request(**signed_post()), "protected")
        assert (protected.status, protected.message) == (
            503,
            "Authentication is temporarily unavailable",
        )
        # from the standby
        assert node.kong.handle(Request(**signed_post()), "plugin").status == 200
    finally:
        customers.conn.close()
        if node:
            node.cleanup()
        standby.destroy()
        primary.destroy()


# -- the middleware, in servers with several workers ------------------------------------------

# Several worker processes each: a request and its copies may reach different ones.
SERVICES = {
    "flask+gunicorn": lambda port: command("flask+gunicorn", port, "-w", "3"),
    "fastapi+uvicorn": lambda port: command("fastapi+uvicorn", port, "--workers", "2"),
}


@pytest.mark.parametrize("server", list(SERVICES))
def test_the_middleware_accepts_a_request_sent_three_times_at_once_exactly_once(
    database_url, keyed, server
):
    with serving(
        SERVICES[server], {"DATABASE_URL": database_url, "REPLAY_PROTECTION": "1"}
    ) as base:
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            for _ in range(20):
                prepared = requests.Request("POST", base + "/echo", data=b'{"pay": 10}').prepare()
                client.SignedRequestAuth("cert-1", SECRET)(prepared)
                statuses = sorted(
                    pool.map(
                        lambda _, prepared=prepared: (
                            requests.Session().send(prepared, timeout=10).status_code
                        ),
                        range(3),
                    )
                )
                assert statuses == [200, 403, 403], statuses
        without_nonce = requests.Request("POST", base + "/echo", data=b"{}").prepare()
        client.SignedRequestAuth("cert-1", SECRET, nonce=False)(without_nonce)
        assert requests.Session().send(without_nonce, timeout=10).status_code == 400
