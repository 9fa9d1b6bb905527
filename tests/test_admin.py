"""The customer-verification command against a real Postgres: every subcommand and its errors."""
import io
import shlex
import subprocess
import sys
import time

import pytest

from customer_auth import admin as customer_admin
from customer_auth import signature
from customer_auth.connection import Settings
from customer_auth.lookup import CustomerStore


@pytest.fixture
def cli(database_url, monkeypatch, customers):
    monkeypatch.setenv("DATABASE_URL", database_url)

    def run(*argv):
        out = io.StringIO()
        code = customer_admin.main(list(argv), out=out)
        return code, out.getvalue()

    return run


@pytest.fixture
def store(database_url):
    store = CustomerStore(Settings(dsn=database_url, pool_size=1, timeout=2))
    yield store
    store.close()


def printed_key(output):
    return next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("client_key: "))


def test_add_creates_a_customer_with_a_strong_key_printed_once(cli, store):
    code, output = cli("add", "cert-a")
    key = printed_key(output)
    assert code == 0 and len(key) >= 43
    credential = store.fetch("cert-a")
    assert credential.client_key == key and credential.customer_id in output


def test_add_twice_is_an_error(cli, capsys):
    cli("add", "cert-a")
    assert cli("add", "cert-a")[0] == customer_admin.EXIT_EXISTS
    assert "already exists" in capsys.readouterr().err


def test_rotate_keeps_the_previous_key_for_the_grace_period(cli, store):
    old = printed_key(cli("add", "cert-a")[1])
    code, output = cli("rotate", "cert-a", "--grace", "60")
    new = printed_key(output)
    assert code == 0 and new != old
    credential = store.fetch("cert-a")
    now = time.time()
    assert credential.keys_valid_at(now) == (new, old)
    assert credential.keys_valid_at(now + 61) == (new,)


def test_rotate_and_revoke_unknown_certificates_are_errors(cli, capsys):
    assert cli("rotate", "nobody")[0] == customer_admin.EXIT_UNKNOWN
    assert cli("revoke", "nobody")[0] == customer_admin.EXIT_UNKNOWN
    assert "nobody" in capsys.readouterr().err


def test_revoke_refuses_the_customer_and_cannot_be_repeated(cli, store):
    cli("add", "cert-a")
    assert cli("revoke", "cert-a")[0] == 0
    assert store.fetch("cert-a") is None
    assert cli("revoke", "cert-a")[0] == customer_admin.EXIT_UNKNOWN
    assert cli("rotate", "cert-a")[0] == customer_admin.EXIT_UNKNOWN


def test_list_shows_status_and_never_keys(cli):
    keys = [printed_key(cli("add", name)[1]) for name in ("cert-a", "cert-b", "cert-c")]
    keys.append(printed_key(cli("rotate", "cert-b")[1]))
    cli("revoke", "cert-c")
    code, output = cli("list")
    assert code == 0
    rows = {line.split("\t")[1]: line.split("\t")[2] for line in output.splitlines()}
    assert rows["cert-a"] == "active" and rows["cert-b"].startswith("rotating") and rows["cert-c"] == "revoked"
    assert not any(key in output for key in keys)


def test_unreachable_database_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://admin:hunter2@127.0.0.1:1/none")
    monkeypatch.setenv("CUSTOMER_VERIFICATION_DB_TIMEOUT", "1")
    assert customer_admin.main(["list"]) == customer_admin.EXIT_DATABASE
    err = capsys.readouterr().err
    assert "cannot reach the database" in err and "hunter2" not in err


def test_sign_prints_the_three_headers(cli):
    code, output = cli("sign", "cert-a", "--key", "k")
    headers = dict(line.split(": ", 1) for line in output.splitlines())
    assert code == 0
    assert headers[signature.SIGNATURE_HEADER] == signature.sign("cert-a", "k", headers[signature.REQUEST_TIME_HEADER])


def test_sign_prints_a_ready_curl_command(cli):
    code, output = cli("sign", "cert-a", "--key", "k", "--curl", "http://localhost:8000/echo", "--method", "post")
    words = shlex.split(output)
    assert code == 0 and words[:4] == ["curl", "-sS", "-X", "POST"] and words[-1] == "http://localhost:8000/echo"
    assert f"{signature.CERTIFICATE_ID_HEADER}: cert-a" in words


def test_sign_rejects_a_malformed_certificate_id(cli):
    assert cli("sign", "bad id", "--key", "k")[0] == 2


def test_the_console_script_is_installed_and_usage_errors_exit_2():
    result = subprocess.run([sys.executable, "-m", "customer_auth.admin", "frobnicate"], capture_output=True, text=True)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    script = subprocess.run([sys.executable, "-c", "import importlib.metadata as m; "
                             "print([e.value for e in m.entry_points(group='console_scripts') if e.name == 'customer-verification'])"],
                            capture_output=True, text=True)
    assert "customer_auth.admin:main" in script.stdout
