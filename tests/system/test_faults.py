"""Faults, each a test: Postgres stopped, restarted or locked mid-load, the plugin server killed,
Kong dropping a conversation. These stop and restart Postgres, so they use a server of their own."""

import concurrent.futures
import threading
import time

import psycopg2
import pytest
from conftest import ROOT, SCHEMA, SERVER_MODES, SHIPPED, Customers, execute, start_gateway

from customer_auth.core import v1
from devtools.kong_standin import FailClosedRule, KongStandIn
from devtools.throwaway_postgres import ThrowawayPostgres


@pytest.fixture(scope="module")
def own_postgres():
    with ThrowawayPostgres() as server:
        execute(server.dsn, SCHEMA)
        yield server


@pytest.fixture
def customers(own_postgres):
    customers = Customers(own_postgres.dsn)
    customers.clear()
    customers.ids = {
        name: customers.add(name, f"key-{name}") for name in ("cached", "other", "third")
    }
    yield customers
    customers.conn.close()


def signed(certificate_id, client_key=None):
    return list(v1.signed_headers(certificate_id, client_key or f"key-{certificate_id}").items())


def gateway_for(own_postgres, mode=SHIPPED, config=None, timeout="2", fail_closed=False):
    return start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        mode,
        env={"DATABASE_URL": own_postgres.dsn, "CUSTOMER_VERIFICATION_DB_TIMEOUT": timeout},
        config=config,
        fail_closed=FailClosedRule() if fail_closed else None,
    )


@pytest.mark.parametrize("mode", list(SERVER_MODES))
def test_locked_table_gives_503_within_the_timeout_and_cached_customers_are_not_delayed(
    own_postgres, customers, mode
):
    """In gevent mode this is what proves the driver cooperative: a lookup stuck behind a lock
    must not hold up the requests that the cache answers."""
    gateway = gateway_for(own_postgres, mode, timeout="3")
    try:
        assert gateway.send(signed("cached")).status == 200
        locker = psycopg2.connect(own_postgres.dsn)
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE")
            slow = {}
            blocked = threading.Thread(
                target=lambda: slow.update(outcome=gateway.send(signed("other")))
            )
            blocked.start()
            time.sleep(0.3)  # the lookup for "other" is now waiting on the lock
            cached = [gateway.send(signed("cached")).status for _ in range(50)]
            still_waiting = blocked.is_alive()
            blocked.join(timeout=30)
        locker.rollback()
        locker.close()
        assert cached == [200] * 50
        assert still_waiting, "cached requests waited for the locked lookup"
        assert slow["outcome"].status == 503
        assert gateway.send(signed("other")).status == 200  # and it recovers at once
    finally:
        gateway.cleanup()


def test_postgres_stopped_mid_load_then_back_without_restarting_anything(own_postgres, customers):
    gateway = gateway_for(
        own_postgres, config={"cache_ttl": 0.2, "stale_ttl": 120, "negative_cache_ttl": 0.2}
    )
    statuses, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            statuses.append(gateway.send(signed("cached")).status)

    try:
        assert gateway.send(signed("cached")).status == 200
        loaders = [threading.Thread(target=load) for _ in range(4)]
        for loader in loaders:
            loader.start()
        time.sleep(0.3)
        own_postgres.stop()
        time.sleep(0.5)
        down = gateway.send(signed("other"))
        own_postgres.start()
        time.sleep(0.5)
        stop.set()
        for loader in loaders:
            loader.join()
        assert down.status == 503 and down.upstream is None
        assert statuses and set(statuses) == {200}  # the cached customer never noticed
        assert gateway.send(signed("other")).status == 200
    finally:
        stop.set()
        gateway.cleanup()


def test_postgres_restart_costs_no_request(own_postgres, customers):
    # No cache and no stale window: every request needs a working connection.
    gateway = gateway_for(
        own_postgres, config={"cache_ttl": 0, "stale_ttl": 0, "negative_cache_ttl": 0}
    )
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(lambda _: gateway.send(signed("cached")).status, range(64))) == {
                200
            }
            own_postgres.stop()
            own_postgres.start()
            after = list(
                pool.map(
                    lambda i: gateway.send(signed(("cached", "other", "third")[i % 3])).status,
                    range(64),
                )
            )
        assert after == [200] * 64
        connections = Customers(own_postgres.dsn).execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'customer_verification'"
        )
        assert connections[0][0] <= 4  # bounded by the pool size
    finally:
        gateway.cleanup()


def test_plugin_server_killed_mid_load_lets_nothing_through_unverified(own_postgres, customers):
    gateway = gateway_for(own_postgres, fail_closed=True)
    outcomes, stop = [], threading.Event()
    forged = [("X-Customer-Id", "forged")]

    def load(i):
        while not stop.is_set():
            certificate_id = ("cached", "other")[i % 2]
            lines = signed(certificate_id) if i % 3 else signed(certificate_id, "wrong")
            outcomes.append((certificate_id, gateway.send(lines + forged)))

    try:
        loaders = [threading.Thread(target=load, args=(i,)) for i in range(6)]
        for loader in loaders:
            loader.start()
        time.sleep(0.3)
        gateway.server.stop(kill=True)
        time.sleep(0.3)
        gateway.server.start()
        time.sleep(0.5)
        stop.set()
        for loader in loaders:
            loader.join()
        reached = [(c, o) for c, o in outcomes if o.upstream is not None]
        assert reached and all(
            o.upstream["x-customer-id"] == [customers.ids[c]] for c, o in reached
        )
        assert {o.status for _, o in outcomes} <= {200, 403, 500, 503}
        assert any(o.status == 503 for _, o in outcomes)  # the fail-closed rule did answer
        assert gateway.send(signed("cached")).status == 200
    finally:
        stop.set()
        gateway.cleanup()


def test_kong_dropping_conversations_midway_does_not_stop_the_server(own_postgres, customers):
    """A Kong worker that dies mid-request leaves its event unanswered. The server must go on
    serving everybody else."""
    gateway = gateway_for(own_postgres)
    try:
        assert gateway.send(signed("cached")).status == 200
        instance_id = next(iter(gateway.kong._instances.values()))[0]
        for _ in range(50):
            dropping = KongStandIn(gateway.server.socket_path, gateway.kong.info)
            step = dropping.call(
                "plugin.HandleEvent", {"InstanceId": instance_id, "EventName": "access"}
            )
            assert step["Data"]["Method"] == "kong.request.get_headers"
            dropping.close()  # and never answers
        assert gateway.send(signed("cached")).status == 200
        assert gateway.send(signed("other", "wrong")).status == 403
    finally:
        gateway.cleanup()
