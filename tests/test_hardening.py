"""Weaknesses found by an adversarial review, each reproduced through the real parts: a malformed
DATABASE_URL, keys that are not strings, a silently dead listener connection, a flood of unknown
certificates, and the CLI given values that cannot work."""

import io
import json
import time

import psycopg2
import pytest
from conftest import ROOT, start_gateway

from customer_auth import cli as command_line
from customer_auth.core import v1
from customer_auth.errors import StoreUnavailable
from customer_auth.store.cache import CredentialCache
from customer_auth.store.connection import Settings
from customer_auth.store.customers import CustomerStore
from devtools.tcp_proxy import FreezableProxy

# The four shapes libpq quotes in its errors, each with a password whose pieces must never show.
PASSWORD_PIECES = ("Hunter7", "Tail9x")
MALFORMED_URLS = {
    "no colon after the scheme": "postgresql//cv:Hunter7Tail9x@127.0.0.1:1/db",
    "a bad percent-escape": "postgresql://cv:Hunter7%zzTail9x@127.0.0.1:1/db",
    "an @ in the password": "postgresql://cv:Hunter7@Tail9x@127.0.0.1:1/db",
    "a / in the password": "postgresql://cv:Hunter7/Tail9x@127.0.0.1:1/db",
}


def assert_no_secret(text):
    assert not any(piece in text for piece in PASSWORD_PIECES), text


def signed(certificate_id, client_key):
    return list(v1.signed_headers(certificate_id, client_key).items())


@pytest.mark.parametrize("shape", list(MALFORMED_URLS))
def test_a_malformed_url_is_named_without_any_of_its_secrets_by_the_store(shape):
    store = CustomerStore(Settings(dsn=MALFORMED_URLS[shape], pool_size=1, timeout=1))
    with pytest.raises(StoreUnavailable) as error:
        store.fetch("cert-1")
    assert "DATABASE_URL is not a valid connection URL" in str(error.value)
    assert_no_secret(str(error.value))


@pytest.mark.parametrize("shape", list(MALFORMED_URLS))
def test_a_malformed_url_is_named_without_any_of_its_secrets_by_the_plugin_server(shape):
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": MALFORMED_URLS[shape], "CUSTOMER_VERIFICATION_DB_TIMEOUT": "1"},
    )
    try:
        outcome = gateway.send(signed("cert-1", "key"))
        assert outcome.status == 503
        time.sleep(0.2)  # the listener's first attempt is logged too
        log = gateway.server.log()
        assert "DATABASE_URL is not a valid connection URL" in log
        kong_log = gateway.kong.error_log  # what the operator reads, at Kong's default level
        assert any(
            "DATABASE_URL is not a valid connection URL" in text and level == "warn"
            for level, text in kong_log.lines()
        )
        assert_no_secret(log + outcome.body + kong_log.text())
    finally:
        gateway.cleanup()


@pytest.mark.parametrize("shape", list(MALFORMED_URLS))
def test_a_malformed_url_is_named_without_any_of_its_secrets_by_the_cli(shape, monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", MALFORMED_URLS[shape])
    assert (
        command_line.main(["list"]) == command_line.EXIT_USAGE
    )  # a setting to fix, not a database to wait for
    err = capsys.readouterr().err
    assert "DATABASE_URL is not a valid connection URL" in err and "Traceback" not in err
    assert_no_secret(err)


def test_percent_encoded_passwords_and_multi_host_urls_are_accepted(monkeypatch):
    from customer_auth.store.connection import check_dsn

    monkeypatch.setenv("PGHOST", "db.internal")
    check_dsn(
        "postgresql://cv:p%40ss%2Fw%3Ard%25@h1:5432,h2:5433/db?target_session_attrs=read-write"
    )
    check_dsn("host=h1,h2 port=5432, dbname=db")
    check_dsn("")  # libpq's PG* variables


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
        assert gateway.send(signed("cert-quiet", "key-1")).status == 200  # cached for an hour
        proxy.freeze()
        # announced into the void
        customers.set_authentication("cert-quiet", revoked_at=time.time())
        revoked_at = time.monotonic()
        while gateway.send(signed("cert-quiet", "key-1")).status == 200:
            assert time.monotonic() - revoked_at < 10, "the revocation was not seen within 10 s"
            time.sleep(0.1)
        assert gateway.send(signed("cert-quiet", "key-1")).status == 403
        assert "change listener lost its database connection" in gateway.server.log()
    finally:
        gateway.cleanup()
        proxy.close()


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


def run_cli(*argv):
    out = io.StringIO()
    return command_line.main(list(argv), out=out), out.getvalue()


@pytest.fixture
def cli(database_url, monkeypatch, customers):
    monkeypatch.setenv("DATABASE_URL", database_url)
    return run_cli


@pytest.mark.parametrize("grace", ["inf", "-inf", "nan", "-1", "1e300", "9999999999", "soon"])
def test_rotate_refuses_a_grace_period_that_cannot_work_and_stores_nothing(
    cli, customers, grace, capsys
):
    cli("add", "cert-r")
    before = customers.execute("SELECT authentication FROM customer WHERE certificate = 'cert-r'")
    assert cli("rotate", "cert-r", "--grace", grace)[0] == 2
    assert "--grace" in capsys.readouterr().err
    assert (
        customers.execute("SELECT authentication FROM customer WHERE certificate = 'cert-r'")
        == before
    )


@pytest.mark.parametrize(
    "certificate_id", ["", "with space", "bell\x07", "esc\x1b[31mred", "é", "x" * 257]
)
def test_add_refuses_a_certificate_id_the_plugin_could_never_verify(cli, customers, certificate_id):
    assert cli("add", certificate_id)[0] == 2
    assert customers.execute("SELECT count(*) FROM customer") == [(0,)]


def test_list_shows_whatever_is_stored_without_crashing_or_writing_control_characters(
    cli, customers
):
    customers.add("esc\x1b[2Jcert", "k")
    for expiry in (1e308, "Infinity", "NaN", "tomorrow", -1e308):
        customers.add(
            f"odd-{expiry}", "k", previous_client_key="old", previous_key_expires_at=expiry
        )
    code, output = cli("list")
    assert code == 0
    assert "\x1b" not in output and "esc\\x1b[2Jcert" in output
    assert len(output.splitlines()) == 6
