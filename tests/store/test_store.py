"""The credential store and its cache against a real Postgres."""

import concurrent.futures
import json
import threading
import time

import psycopg2
import pytest

from customer_auth.errors import StoreUnavailable
from customer_auth.store.cache import CredentialCache
from customer_auth.store.connection import Settings
from customer_auth.store.customers import Credential, CustomerStore


@pytest.fixture
def store(database_url):
    store = CustomerStore(Settings(dsn=database_url, pool_size=3, timeout=1.0))
    yield store
    store.close()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def cache_on(store, clock, **overrides):
    options = {"ttl": 60, "negative_ttl": 5, "stale_ttl": 300, "max_entries": 100, **overrides}
    return CredentialCache(store.fetch, clock=clock, **options)


def test_fetch_reads_the_existing_table_layout(store, customers):
    customer_id = customers.add("cert-1", "key-1")
    assert store.fetch("cert-1") == Credential(customer_id, "key-1")
    assert store.fetch("cert-unknown") is None


def test_fetch_is_parameterized(store, customers):
    customers.add("cert-1", "key-1")
    assert store.fetch("cert-1' OR '1'='1") is None
    assert store.fetch("%") is None


def test_revoked_customers_and_customers_without_key_are_not_returned(store, customers):
    customers.add("cert-r", "key", revoked_at=1)
    customers.execute(
        "INSERT INTO customer (certificate, authentication) VALUES ('cert-nokey', '{}')"
    )
    assert store.fetch("cert-r") is None and store.fetch("cert-nokey") is None


def test_a_certificate_on_two_rows_is_refused(store, customers, caplog):
    customers.execute("DROP INDEX customer_certificate_key")
    try:
        customers.add("cert-d", "key-1")
        customers.add("cert-d", "key-2")
        assert store.fetch("cert-d") is None
        assert "belongs to 2 customers" in caplog.text
    finally:
        customers.execute("DELETE FROM customer WHERE certificate = 'cert-d'")
        customers.execute("CREATE UNIQUE INDEX customer_certificate_key ON customer (certificate)")


def test_a_locked_table_times_out_as_unavailable(store, customers):
    customers.add("cert-1", "key-1")
    locker = psycopg2.connect(customers.url)
    try:
        with locker.cursor() as cursor:
            cursor.execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StoreUnavailable, match="lock timeout|statement timeout|canceling"):
                store.fetch("cert-1")
    finally:
        locker.close()
    assert store.fetch("cert-1").client_key == "key-1"


def test_unreachable_database_is_unavailable_without_the_password():
    store = CustomerStore(
        Settings(dsn="postgresql://u:hunter2@127.0.0.1:1/db", pool_size=1, timeout=1)
    )
    with pytest.raises(StoreUnavailable) as error:
        store.fetch("cert-1")
    assert "hunter2" not in str(error.value)


def test_connections_are_bounded_by_the_pool(store, customers):
    customers.add("cert-1", "key-1")
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        assert all(
            c.client_key == "key-1" for c in pool.map(lambda _: store.fetch("cert-1"), range(200))
        )
    count = customers.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'customer_verification'"
    )
    assert count[0][0] <= 3


def test_a_killed_connection_is_replaced_without_failing_the_lookup(store, customers):
    customers.add("cert-1", "key-1")
    store.fetch("cert-1")
    customers.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
        "'customer_verification'"
    )
    assert store.fetch("cert-1").client_key == "key-1"


def test_cache_hits_do_not_query(store, customers):
    customers.add("cert-1", "key-1")
    clock = Clock()
    cache = cache_on(store, clock)
    for _ in range(10):
        assert cache.get("cert-1").client_key == "key-1"
    assert store.queries == 1
    clock.now += 61
    cache.get("cert-1")
    assert store.queries == 2


def test_unknown_certificates_are_cached_for_the_negative_ttl(store, customers):
    clock = Clock()
    cache = cache_on(store, clock)
    assert cache.get("nobody") is None and cache.get("nobody") is None
    assert store.queries == 1
    clock.now += 6
    cache.get("nobody")
    assert store.queries == 2


def test_concurrent_misses_for_one_certificate_make_one_query(store, customers):
    customers.add("cert-1", "key-1")
    cache = cache_on(store, Clock())
    locker = psycopg2.connect(customers.url)
    with locker.cursor() as cursor:
        # the first miss waits; the rest queue on it
        cursor.execute("LOCK TABLE customer IN ACCESS EXCLUSIVE MODE")
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            results = [pool.submit(cache.get, "cert-1") for _ in range(20)]
            time.sleep(0.2)
            locker.rollback()
            assert {future.result().client_key for future in results} == {"key-1"}
    locker.close()
    assert store.queries == 1


def test_stale_window_serves_known_customers_while_the_store_fails(store, customers, table_gone):
    customers.add("cert-1", "key-1")
    clock = Clock()
    cache = cache_on(store, clock, ttl=10, stale_ttl=100)
    cache.get("cert-1")
    clock.now += 50
    with table_gone:
        assert cache.get("cert-1").client_key == "key-1"
        with pytest.raises(StoreUnavailable):
            cache.get("cert-other")
        clock.now += 100
        with pytest.raises(StoreUnavailable):
            cache.get("cert-1")
    assert cache.get("cert-1").client_key == "key-1"


def test_the_cache_is_bounded_and_evicts_the_least_recently_used(store, customers):
    for i in range(5):
        customers.add(f"cert-{i}", f"key-{i}")
    cache = cache_on(store, Clock(), max_entries=3)
    for i in range(3):
        cache.get(f"cert-{i}")
    cache.get("cert-0")  # recently used
    cache.get("cert-3")
    cache.get("cert-4")
    assert len(cache) == 3
    queries = store.queries
    cache.get("cert-0")
    assert store.queries == queries
    cache.get("cert-1")
    assert store.queries == queries + 1


def test_a_lookup_that_raced_an_eviction_is_not_cached(store, customers):
    customers.add("cert-1", "key-1")
    entered, release = threading.Event(), threading.Event()

    def slow_fetch(certificate_id):
        entered.set()
        release.wait(5)
        return store.fetch(certificate_id)

    cache = CredentialCache(slow_fetch, 60, 5, 300, 100, clock=Clock())
    worker = threading.Thread(target=cache.get, args=("cert-1",))
    worker.start()
    entered.wait(5)
    cache.evict("cert-1")  # a change was announced while the lookup ran
    release.set()
    worker.join()
    assert len(cache) == 0


SIGNED = ("cert-1", "1700000000", "ab" * 32)  # a request's three header values, as sent
AT = 1700000000


def test_a_verified_request_is_recalled_only_while_its_very_credential_is_fresh(store, customers):
    customer_id = customers.add("cert-1", "key-1")
    clock = Clock()
    cache = cache_on(store, clock)
    cache.verified.remember(SIGNED, cache.get("cert-1"), AT, now=AT)
    assert cache.verified.recall(SIGNED, AT, clock_skew=300) == customer_id
    assert cache.verified.recall(("cert-1", "1700000000", "cd" * 32), AT, 300) is None
    assert (
        cache.verified.recall(SIGNED, AT + 301, 300) is None
        and cache.verified.recall(SIGNED, AT - 301, 300) is None
    )
    assert cache.verified.recall(SIGNED, AT + 301, 600) == customer_id  # the skew is the caller's
    cache.evict("cert-1")  # a change was announced
    assert cache.verified.recall(SIGNED, AT, 300) is None
    cache.get("cert-1")  # fetched again: an equal credential, but not the one verified
    assert cache.verified.recall(SIGNED, AT, 300) is None
    cache.verified.remember(SIGNED, cache.get("cert-1"), AT, now=AT)
    clock.now += 61  # past the TTL, the credential must be looked up again first
    assert cache.verified.recall(SIGNED, AT, 300) is None
    assert store.queries == 2  # recalling never asks the store


def test_a_request_verified_during_a_grace_period_is_recalled_only_until_it_ends(store, customers):
    customer_id = customers.add(
        "cert-1", "new-key", previous_client_key="old-key", previous_key_expires_at=AT + 60
    )
    cache = cache_on(store, Clock())
    cache.verified.remember(SIGNED, cache.get("cert-1"), AT, now=AT)
    assert cache.verified.recall(SIGNED, AT + 59, 300) == customer_id
    assert cache.verified.recall(SIGNED, AT + 60, 300) is None


def test_verified_requests_are_bounded_and_the_oldest_leave_first(store, customers):
    customer_id = customers.add("cert-1", "key-1")
    cache = cache_on(store, Clock(), max_entries=2)
    requests = [("cert-1", str(AT + i), "ab" * 32) for i in range(3)]
    for i, signed in enumerate(requests):
        cache.verified.remember(signed, cache.get("cert-1"), AT + i, now=AT)
    assert len(cache.verified) == 2
    assert cache.verified.recall(requests[0], AT, 300) is None
    assert cache.verified.recall(requests[2], AT, 300) == customer_id


def test_plugin_instances_with_the_same_cache_settings_share_one_cache(database_url):
    from customer_auth.store.credentials import Credentials

    credentials = Credentials(Settings(dsn=database_url, pool_size=1, timeout=1.0))
    try:
        one, same = credentials.cache(60, 5, 300, 100), credentials.cache(60, 5, 300, 100)
        assert one is same and credentials.cache(30, 5, 300, 100) is not one
    finally:
        credentials.close()


@pytest.fixture
def store(database_url):
    store = CustomerStore(Settings(dsn=database_url, pool_size=2, timeout=2.0))
    yield store
    store.close()


@pytest.mark.parametrize(
    "stored", [False, True, 0, 1, {}, [], None, "", " ", "\t\n", ["key"], {"k": "v"}], ids=repr
)
def test_only_a_non_blank_json_string_is_a_client_key(store, customers, stored, caplog):
    customers.execute(
        "INSERT INTO customer (certificate, authentication) VALUES ('cert-odd', %s)",
        json.dumps({"client_key": stored}),
    )
    assert store.fetch("cert-odd") is None
    assert "certificate 'cert-odd': authentication.client_key" in caplog.text


@pytest.mark.parametrize("stored", [False, 0, {}, " "], ids=repr)
def test_a_previous_key_that_is_not_a_string_refuses_the_customer_only_during_its_grace_period(
    store, customers, stored, caplog
):
    customers.add(
        "cert-grace",
        "new-key",
        previous_client_key=stored,
        previous_key_expires_at=time.time() + 600,
    )
    customers.add(
        "cert-done",
        "new-key",
        previous_client_key=stored,
        previous_key_expires_at=time.time() - 600,
    )
    assert store.fetch("cert-grace") is None
    assert "certificate 'cert-grace': authentication.previous_client_key" in caplog.text
    assert store.fetch("cert-done").keys_valid_at(time.time()) == ("new-key",)


def test_an_infinite_grace_period_written_by_hand_does_not_keep_the_old_key(store, customers):
    authentication = {
        "client_key": "new",
        "previous_client_key": "old",
        "previous_key_expires_at": "Infinity",
    }
    customers.execute(
        "INSERT INTO customer (certificate, authentication) VALUES ('cert-inf', %s)",
        json.dumps(authentication),
    )
    assert store.fetch("cert-inf").keys_valid_at(time.time()) == ("new",)


def test_a_flood_of_unknown_certificates_leaves_known_customers_cached(
    store, customers, table_gone
):
    for i in range(5):
        customers.add(f"cert-{i}", f"key-{i}")
    cache = CredentialCache(store.fetch, ttl=60, negative_ttl=60, stale_ttl=300, max_entries=5)
    for i in range(5):
        cache.get(f"cert-{i}")
    for i in range(200):
        assert cache.get(f"unknown-{i}") is None
    queries = store.queries
    assert [cache.get(f"cert-{i}").client_key for i in range(5)] == [f"key-{i}" for i in range(5)]
    assert store.queries == queries  # none was pushed out
    assert len(cache) == 10  # both kinds bounded


def test_a_throwaway_postgres_changes_no_mode_of_a_folder_it_did_not_create(tmp_path, monkeypatch):
    import os
    import tempfile

    from devtools import throwaway_postgres

    if os.geteuid() != 0:
        pytest.skip("the server runs as another user only when the tests run as root")
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    monkeypatch.setattr(tempfile, "tempdir", str(closed))
    with pytest.raises(RuntimeError, match="set TMPDIR"):
        throwaway_postgres.ThrowawayPostgres()
    assert closed.stat().st_mode & 0o777 == 0o700  # said what it needs; changed nothing
