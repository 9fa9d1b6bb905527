"""Revocation, re-keying and deletion reach a running plugin server within a second, through
LISTEN/NOTIFY, for plain SQL changes, also after the listener's connection was killed."""

import threading
import time

import psycopg2
import pytest
from conftest import ROOT, start_gateway

from customer_auth.core import v1
from customer_auth.store.cache import CredentialCache
from devtools.tcp_proxy import FreezableProxy

LONG_TTL = {"cache_ttl": 3600, "negative_cache_ttl": 3600}


def signed(client_key, certificate_id="cert-live"):
    return list(v1.signed_headers(certificate_id, client_key).items())


def status_within_one_second(gateway, header_lines, expected):
    deadline = time.monotonic() + 1.0
    while True:
        status = gateway.send(header_lines).status
        if status == expected or time.monotonic() > deadline:
            return status
        time.sleep(0.02)


def wait_until_listening(gateway, timeout=10):
    """Until the plugin server's listener has run LISTEN (it says so in its output): only changes
    after that are announced."""
    deadline = time.monotonic() + timeout
    while "change listener listening on customer_changed" not in gateway.server.log():
        assert time.monotonic() < deadline, "the change listener never listened"
        time.sleep(0.02)


@pytest.fixture
def live(gateway, customers):
    customers.add("cert-live", "key-1")
    gateway.kong.configure("plugin", LONG_TTL)
    assert gateway.send(signed("key-1")).status == 200  # cached now, for an hour
    wait_until_listening(gateway)
    assert gateway.send(signed("key-1")).status == 200
    return gateway


@pytest.fixture
def unstarted(database_url):
    """A credential store whose listener has not started yet: the state of a plugin server that
    answers its first requests while the listener is still connecting."""
    from customer_auth.store.connection import Settings
    from customer_auth.store.credentials import Credentials

    credentials = Credentials(Settings(dsn=database_url, pool_size=2, timeout=2.0))
    yield credentials, credentials.cache(3600, 3600, 300, 100)
    credentials.close()


def test_a_change_before_the_first_listen_does_not_stay_cached(unstarted, customers):
    credentials, cache = unstarted
    customers.add("cert-early", "key-1")
    assert cache.get("cert-early").client_key == "key-1"  # cached for an hour
    customers.set_authentication("cert-early", revoked_at=time.time())  # announced to nobody
    credentials.listener.start()
    assert credentials.listener.listening.wait(10)
    assert cache.get("cert-early") is None


def test_a_lookup_in_flight_across_the_first_listen_is_not_cached(unstarted, customers):
    credentials, _ = unstarted
    customers.add("cert-early", "key-1")
    read, release = threading.Event(), threading.Event()

    def slow_fetch(certificate_id):
        credential = credentials.store.fetch(certificate_id)  # read before the change
        read.set()
        release.wait(10)
        return credential

    cache = CredentialCache(slow_fetch, 3600, 3600, 300, 100)
    credentials._caches[(0,)] = cache  # evicted by the listener like the plugin's caches
    reader = threading.Thread(target=cache.get, args=("cert-early",))
    reader.start()
    assert read.wait(10)
    customers.set_authentication("cert-early", revoked_at=time.time())
    credentials.listener.start()
    assert credentials.listener.listening.wait(10)
    release.set()
    reader.join(10)
    assert len(cache) == 0


def test_revocation_by_sql_is_seen_within_a_second(live, customers):
    customers.set_authentication("cert-live", revoked_at=time.time())
    assert status_within_one_second(live, signed("key-1"), 403) == 403


def test_a_new_key_by_sql_is_seen_within_a_second(live, customers):
    customers.set_authentication("cert-live", client_key="key-2")
    assert status_within_one_second(live, signed("key-2"), 200) == 200
    assert live.send(signed("key-1")).status == 403


def test_deletion_is_seen_within_a_second(live, customers):
    customers.execute("DELETE FROM customer WHERE certificate = 'cert-live'")
    assert status_within_one_second(live, signed("key-1"), 403) == 403


def test_a_new_customer_replaces_a_cached_unknown_within_a_second(live, customers):
    assert live.send(signed("key-n", "cert-new")).status == 403  # negatively cached for an hour
    customers.add("cert-new", "key-n")
    assert status_within_one_second(live, signed("key-n", "cert-new"), 200) == 200


def test_changes_are_seen_after_the_listener_connection_was_killed(live, customers):
    killed = customers.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'customer_verification listener'"
    )
    assert killed == [(True,)]
    # Changed while the listener is down: its notification is lost, the reconnect must cover it.
    customers.set_authentication("cert-live", revoked_at=time.time())
    assert status_within_one_second(live, signed("key-1"), 403) == 403
    # And the reconnected listener hears the next change.
    customers.set_authentication("cert-live", client_key="key-3", revoked_at=None)
    assert status_within_one_second(live, signed("key-3"), 200) == 200


def test_a_silently_dead_listener_connection_is_replaced_and_a_revocation_holds_within_10_s(
    postgres, customers
):
    """The proxy stops forwarding on every open connection without closing any, as a NAT that
    forgot them would; new connections go through."""
    params = psycopg2.extensions.parse_dsn(customers.url)
    proxy = FreezableProxy(params["host"], int(params["port"]))
    url = psycopg2.extensions.make_dsn(customers.url, host="127.0.0.1", port=proxy.port)
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": url},
        config={"cache_ttl": 3600},
    )
    try:
        customers.add("cert-quiet", "key-1")
        assert gateway.send(signed("key-1", "cert-quiet")).status == 200  # cached for an hour
        proxy.freeze()
        # announced into the void
        customers.set_authentication("cert-quiet", revoked_at=time.time())
        revoked_at = time.monotonic()
        while gateway.send(signed("key-1", "cert-quiet")).status == 200:
            assert time.monotonic() - revoked_at < 10, "the revocation was not seen within 10 s"
            time.sleep(0.1)
        assert gateway.send(signed("key-1", "cert-quiet")).status == 403
        assert "change listener lost its database connection" in gateway.server.log()
    finally:
        gateway.cleanup()
        proxy.close()
