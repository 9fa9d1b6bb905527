"""The database settings: a URL that cannot work is named without any of its secrets, by the
store, the plugin server and the CLI alike; a bad setting answers 503 and says so in Kong's log;
what libpq accepts is accepted."""

import time

import pytest
from conftest import ROOT, start_gateway

from customer_auth import cli as command_line
from customer_auth.core import v1
from customer_auth.errors import StoreUnavailable
from customer_auth.store.connection import Settings
from customer_auth.store.customers import CustomerStore

# The four shapes libpq quotes in its errors, each with a password whose pieces must never show.
PASSWORD_PIECES = ("Hunter7", "Tail9x")


MALFORMED_URLS = {
    "no colon after the scheme": "postgresql//cv:Hunter7Tail9x@127.0.0.1:1/db",
    "a bad percent-escape": "postgresql://cv:Hunter7%zzTail9x@127.0.0.1:1/db",
    "an @ in the password": "postgresql://cv:Hunter7@Tail9x@127.0.0.1:1/db",
    "a / in the password": "postgresql://cv:Hunter7/Tail9x@127.0.0.1:1/db",
}


def signed(certificate_id, client_key):
    return list(v1.signed_headers(certificate_id, client_key).items())


def assert_no_secret(text):
    assert not any(piece in text for piece in PASSWORD_PIECES), text


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


BAD_SETTINGS = {
    "CUSTOMER_VERIFICATION_POOL_SIZE=abc": (
        {"CUSTOMER_VERIFICATION_POOL_SIZE": "abc"},
        "POOL_SIZE",
    ),
    "CUSTOMER_VERIFICATION_DB_TIMEOUT=2s": (
        {"CUSTOMER_VERIFICATION_DB_TIMEOUT": "2s"},
        "DB_TIMEOUT",
    ),
    "CUSTOMER_VERIFICATION_DB_TIMEOUT=0": ({"CUSTOMER_VERIFICATION_DB_TIMEOUT": "0"}, "DB_TIMEOUT"),
    "a missing CUSTOMER_VERIFICATION_ENV_FILE": (
        {"CUSTOMER_VERIFICATION_ENV_FILE": "/nonexistent/cv.env"},
        "ENV_FILE",
    ),
}


@pytest.mark.parametrize("setting", list(BAD_SETTINGS))
def test_a_bad_setting_answers_503_and_says_so_in_kongs_log_at_its_default_level(
    database_url, customers, setting
):
    env, name = BAD_SETTINGS[setting]
    customers.add("cert-1", "key-1")
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        env={"DATABASE_URL": database_url, **env},
    )
    try:
        outcomes = [
            gateway.send(list(v1.signed_headers("cert-1", "key-1").items())) for _ in range(3)
        ]
        assert {(o.status, o.message) for o in outcomes} == {
            (503, "Authentication is temporarily unavailable")
        }
        assert all(o.upstream is None for o in outcomes)
        kept = "\n".join(text for level, text in gateway.kong.error_log.lines() if level != "info")
        assert f"CUSTOMER_VERIFICATION_{name}" in kept and "Traceback" not in gateway.server.log()
        # never the URL's user:password
        assert database_url.split("@")[0] not in gateway.kong.error_log.text()
    finally:
        gateway.cleanup()


@pytest.mark.parametrize("setting", list(BAD_SETTINGS))
def test_a_bad_setting_makes_the_cli_exit_2_with_the_same_words(
    database_url, setting, monkeypatch, capsys
):
    from customer_auth import cli

    env, name = BAD_SETTINGS[setting]
    monkeypatch.setenv("DATABASE_URL", database_url)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    assert cli.main(["list"]) == 2
    err = capsys.readouterr().err
    assert f"CUSTOMER_VERIFICATION_{name}" in err and "Traceback" not in err
