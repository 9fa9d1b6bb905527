"""Scale-out against a real topology: a Postgres primary with a real streaming hot standby, three
plugin server processes as three Kong nodes sharing one multi-host DATABASE_URL, and PgBouncer.

Every test builds its own primary and standby (pg_basebackup of the embedded server), since it
stops, pauses or promotes them."""

import time

import psycopg2
import pytest
from conftest import ROOT, SCHEMA, Customers, execute, start_gateway

from customer_auth.core import v1
from customer_auth.store.changes import WAL_POSITION
from devtools.throwaway_pgbouncer import PGBOUNCER, ThrowawayPgBouncer
from devtools.throwaway_postgres import ThrowawayPostgres

NODES = 3
LONG_TTL = {"cache_ttl": 3600, "negative_cache_ttl": 3600}
NO_CACHE = {"cache_ttl": 0, "negative_cache_ttl": 0, "stale_ttl": 0}  # every request asks the store


class Cluster:
    def __init__(self):
        self.primary = ThrowawayPostgres(
            extra_options="-c full_page_writes=on"
        ).start()  # pg_basebackup needs it
        execute(self.primary.dsn, SCHEMA)
        self.standby = self.primary.standby()
        self.customers = Customers(self.primary.dsn)

    def url(self, *servers):
        """One URL naming the whole cluster, in the given host order."""
        hosts = ",".join(f"127.0.0.1:{server.port}" for server in servers)
        return f"postgresql://postgres@{hosts}/postgres"

    def wait_for_replay(self):
        """Until the standby has replayed everything the primary has written (as the listener
        measures it)."""
        target = self.customers.execute(WAL_POSITION)[0][0]
        standby = Customers(self.standby.dsn)
        try:
            deadline = time.monotonic() + 10
            while not standby.execute("SELECT pg_last_wal_replay_lsn() - '0/0' >= %s", target)[0][
                0
            ]:
                assert time.monotonic() < deadline, "the standby does not replay"
                time.sleep(0.02)
        finally:
            standby.conn.close()

    def on_standby(self, sql, *params):
        standby = Customers(self.standby.dsn)
        try:
            return standby.execute(sql, *params)
        finally:
            standby.conn.close()

    def destroy(self):
        self.customers.conn.close()
        self.standby.destroy()
        self.primary.destroy()


@pytest.fixture
def cluster():
    cluster = Cluster()
    yield cluster
    cluster.destroy()


def kong_nodes(url, config, **env):
    nodes = []
    try:
        for _ in range(NODES):
            node = start_gateway(
                ROOT / "customer_verification.py",
                "customer_verification",
                env={"DATABASE_URL": url, "CUSTOMER_VERIFICATION_DB_TIMEOUT": "1", **env},
                config=config,
            )
            nodes.append(node)
        return nodes
    except BaseException:
        for node in nodes:
            node.cleanup()
        raise


@pytest.fixture
def close_nodes():
    nodes = []
    yield nodes
    for node in nodes:
        node.cleanup()


def signed(certificate_id, client_key):
    return list(v1.signed_headers(certificate_id, client_key).items())


def statuses(nodes, header_lines):
    return [node.send(header_lines).status for node in nodes]


def until_every_node_answers(nodes, header_lines, expected, within):
    """Seconds until every node gave ``expected`` (each asked until it does), or fails."""
    started = time.monotonic()
    for node in nodes:
        while node.send(header_lines).status != expected:
            assert time.monotonic() - started < within, (
                f"not every node answered {expected} within {within} s"
            )
            time.sleep(0.02)
    return time.monotonic() - started


def wait_until_listening(nodes):
    for node in nodes:
        assert node.send([]).status == 400  # Kong starts the plugin instance, hence the listener
        deadline = time.monotonic() + 10
        while "change listener listening on customer_changed" not in node.server.log():
            assert time.monotonic() < deadline, node.server.log()
            time.sleep(0.02)


def connections(server, application_name):
    conn = psycopg2.connect(server.dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application_name,),
            )
            return cursor.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.parametrize("primary_first", [True, False], ids=["primary-first", "standby-first"])
def test_lookups_go_to_the_standby_and_every_listener_to_the_primary(
    cluster, close_nodes, primary_first
):
    order = (
        (cluster.primary, cluster.standby) if primary_first else (cluster.standby, cluster.primary)
    )
    for i in range(5):
        cluster.customers.add(f"cert-{i}", f"key-{i}")
    cluster.wait_for_replay()
    close_nodes += kong_nodes(cluster.url(*order), NO_CACHE)
    wait_until_listening(close_nodes)
    # past the WAL position each listener noted: the standby's answers count
    cluster.wait_for_replay()
    for i in range(5):
        assert statuses(close_nodes, signed(f"cert-{i}", f"key-{i}")) == [200] * NODES
    assert connections(cluster.standby, "customer_verification") >= NODES
    assert connections(cluster.primary, "customer_verification") == 0
    assert connections(cluster.primary, "customer_verification listener") == NODES
    assert connections(cluster.standby, "customer_verification listener") == 0


def test_revocation_reaches_every_node_within_a_second_while_the_standby_replay_is_paused(
    cluster, close_nodes
):
    cluster.customers.add("cert-live", "key-1")
    cluster.customers.add("cert-rekeyed", "old-key")
    cluster.wait_for_replay()
    close_nodes += kong_nodes(cluster.url(cluster.standby, cluster.primary), LONG_TTL)
    wait_until_listening(close_nodes)
    # cached for an hour
    assert statuses(close_nodes, signed("cert-live", "key-1")) == [200] * NODES
    assert statuses(close_nodes, signed("cert-rekeyed", "old-key")) == [200] * NODES
    cluster.on_standby("SELECT pg_wal_replay_pause()")
    try:
        cluster.customers.set_authentication("cert-live", revoked_at=time.time())
        cluster.customers.set_authentication("cert-rekeyed", client_key="new-key")
        until_every_node_answers(close_nodes, signed("cert-live", "key-1"), 403, within=1.0)
        until_every_node_answers(close_nodes, signed("cert-rekeyed", "new-key"), 200, within=1.0)
        # The standby still holds the old rows: no node may take its word for them again.
        assert cluster.on_standby(
            "SELECT count(*) FROM customer WHERE authentication->>'revoked_at' IS NULL"
        ) == [(2,)]
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            assert statuses(close_nodes, signed("cert-live", "key-1")) == [403] * NODES
            assert statuses(close_nodes, signed("cert-rekeyed", "old-key")) == [403] * NODES
    finally:
        cluster.on_standby("SELECT pg_wal_replay_resume()")


def test_a_standby_going_down_costs_no_verified_request(cluster, close_nodes):
    cluster.customers.add("cert-1", "key-1")
    cluster.wait_for_replay()
    close_nodes += kong_nodes(cluster.url(cluster.standby, cluster.primary), NO_CACHE)
    # pooled on the standby
    assert statuses(close_nodes, signed("cert-1", "key-1")) == [200] * NODES
    cluster.standby.stop()
    for _ in range(5):
        assert statuses(close_nodes, signed("cert-1", "key-1")) == [200] * NODES


def test_the_primary_going_down_leaves_lookups_on_the_standby_working_with_one_warning(
    cluster, close_nodes
):
    cluster.customers.add("cert-1", "key-1")
    cluster.wait_for_replay()
    close_nodes += kong_nodes(cluster.url(cluster.primary, cluster.standby), NO_CACHE)
    wait_until_listening(close_nodes)
    cluster.primary.stop()
    for _ in range(20):
        assert statuses(close_nodes, signed("cert-1", "key-1")) == [200] * NODES
        time.sleep(0.05)
    for node in close_nodes:
        warnings = [
            text for level, text in node.kong.error_log.lines() if "change listener" in text
        ]
        assert len(warnings) == 1 and "lost its database connection" in warnings[0], warnings


def test_a_promoted_standby_is_found_by_every_listener_without_a_restart(cluster, close_nodes):
    cluster.customers.add("cert-1", "key-1")
    cluster.wait_for_replay()
    close_nodes += kong_nodes(cluster.url(cluster.primary, cluster.standby), LONG_TTL)
    wait_until_listening(close_nodes)
    assert statuses(close_nodes, signed("cert-1", "key-1")) == [200] * NODES
    cluster.primary.stop()
    cluster.standby.promote()
    deadline = time.monotonic() + 15
    while connections(cluster.standby, "customer_verification listener") < NODES:
        assert time.monotonic() < deadline, "the listeners did not find the new primary"
        time.sleep(0.1)
    for node in close_nodes:  # the reconnect cleared the caches; the next lookups cache again
        while "change listener reconnected" not in node.server.log():
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert statuses(close_nodes, signed("cert-1", "key-1")) == [200] * NODES
    promoted = Customers(cluster.standby.dsn)
    try:
        promoted.set_authentication("cert-1", revoked_at=time.time())
    finally:
        promoted.conn.close()
    until_every_node_answers(close_nodes, signed("cert-1", "key-1"), 403, within=1.0)


needs_pgbouncer = pytest.mark.skipif(
    PGBOUNCER is None, reason="PgBouncer is not installed (Debian package pgbouncer)"
)


@pytest.fixture
def bouncer(cluster):
    with ThrowawayPgBouncer(cluster.primary) as bouncer:
        yield bouncer


@needs_pgbouncer
@pytest.mark.parametrize("listener", ["direct", "session"])
def test_lookups_through_a_transaction_pool_and_the_listener_direct_or_in_session_mode(
    cluster, bouncer, close_nodes, listener
):
    cluster.customers.add("cert-1", "key-1")
    listener_url = cluster.url(cluster.primary) if listener == "direct" else bouncer.url("session")
    close_nodes += kong_nodes(
        bouncer.url("transaction"), LONG_TTL, CUSTOMER_VERIFICATION_LISTENER_URL=listener_url
    )
    wait_until_listening(close_nodes)
    assert statuses(close_nodes, signed("cert-1", "key-1")) == [200] * NODES
    cluster.customers.set_authentication("cert-1", revoked_at=time.time())
    until_every_node_answers(close_nodes, signed("cert-1", "key-1"), 403, within=1.0)
    assert "postgres_transaction" in bouncer.log()  # the lookups did go through the pool


@needs_pgbouncer
def test_a_listener_pointed_at_a_transaction_pool_is_a_clear_warning(cluster, bouncer, close_nodes):
    cluster.customers.add("cert-1", "key-1")
    close_nodes += kong_nodes(bouncer.url("transaction"), LONG_TTL)
    assert statuses(close_nodes, signed("cert-1", "key-1")) == [200] * NODES  # lookups work
    for node in close_nodes:
        deadline = time.monotonic() + 10
        while not any(
            "pool_mode=transaction" in text and level == "warn"
            for level, text in node.kong.error_log.lines()
        ):
            assert time.monotonic() < deadline, node.kong.error_log.text()
            node.send(signed("cert-1", "key-1"))
            time.sleep(0.1)


def test_replay_floors_are_per_certificate_bounded_and_forgotten_once_passed():
    from customer_auth.store.replication import ReplayFloors

    floors = ReplayFloors(max_certificates=3)
    floors.raise_to("a", 100)
    floors.raise_to("a", 90)  # never lowered
    assert floors.required("a") == 100 and floors.required("b") == 0
    floors.reached("a", 99)
    assert floors.required("a") == 100
    floors.reached("a", 100)
    assert floors.required("a") == 0 and len(floors) == 0
    floors.raise_to(None, 50)  # a change to everything
    assert floors.required("b") == 50
    for i, certificate_id in enumerate("wxyz"):
        floors.raise_to(certificate_id, 200 + i)
    assert len(floors) == 0 and floors.required("anything") == 203  # folded into one floor, bounded
