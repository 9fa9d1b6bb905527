"""The customer-verification command against a real Postgres: every subcommand and its errors."""

import io
import shlex
import subprocess
import sys
import time

import pytest

from customer_auth import cli as command_line
from customer_auth.core import v1
from customer_auth.store.connection import Settings
from customer_auth.store.customers import CustomerStore


@pytest.fixture
def cli(database_url, monkeypatch, customers):
    monkeypatch.setenv("DATABASE_URL", database_url)

    def run(*argv):
        out = io.StringIO()
        code = command_line.main(list(argv), out=out)
        return code, out.getvalue()

    return run


@pytest.fixture
def store(database_url):
    store = CustomerStore(Settings(dsn=database_url, pool_size=1, timeout=2))
    yield store
    store.close()


def printed_key(output):
    return next(
        line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("client_key: ")
    )


def test_add_creates_a_customer_with_a_strong_key_printed_once(cli, store):
    code, output = cli("add", "cert-a")
    key = printed_key(output)
    assert code == 0 and len(key) >= 43
    credential = store.fetch("cert-a")
    assert credential.client_key == key and credential.customer_id in output


def test_add_twice_is_an_error(cli, capsys):
    cli("add", "cert-a")
    assert cli("add", "cert-a")[0] == command_line.EXIT_EXISTS
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
    assert cli("rotate", "nobody")[0] == command_line.EXIT_UNKNOWN
    assert cli("revoke", "nobody")[0] == command_line.EXIT_UNKNOWN
    assert "nobody" in capsys.readouterr().err


def test_revoke_refuses_the_customer_and_cannot_be_repeated(cli, store):
    cli("add", "cert-a")
    assert cli("revoke", "cert-a")[0] == 0
    assert store.fetch("cert-a") is None
    assert cli("revoke", "cert-a")[0] == command_line.EXIT_UNKNOWN
    assert cli("rotate", "cert-a")[0] == command_line.EXIT_UNKNOWN


def test_list_shows_status_and_never_keys(cli):
    keys = [printed_key(cli("add", name)[1]) for name in ("cert-a", "cert-b", "cert-c")]
    keys.append(printed_key(cli("rotate", "cert-b")[1]))
    cli("revoke", "cert-c")
    code, output = cli("list")
    assert code == 0
    rows = {line.split("\t")[1]: line.split("\t")[2] for line in output.splitlines()[1:]}
    assert (
        rows["cert-a"] == "active"
        and rows["cert-b"].startswith("rotating")
        and rows["cert-c"] == "revoked"
    )
    assert not any(key in output for key in keys)


def test_unreachable_database_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("DATABASE_URL", "postgresql://admin:hunter2@127.0.0.1:1/none")
    monkeypatch.setenv("CUSTOMER_VERIFICATION_DB_TIMEOUT", "1")
    assert command_line.main(["list"]) == command_line.EXIT_DATABASE
    err = capsys.readouterr().err
    assert "cannot reach the database" in err and "hunter2" not in err


def test_sign_prints_the_three_headers(cli):
    code, output = cli("sign", "cert-a", "--key", "k", "--v1")
    headers = dict(line.split(": ", 1) for line in output.splitlines())
    assert code == 0
    assert headers[v1.SIGNATURE_HEADER] == v1.sign("cert-a", "k", headers[v1.REQUEST_TIME_HEADER])


def test_sign_prints_a_ready_curl_command(cli):
    code, output = cli(
        "sign",
        "cert-a",
        "--key",
        "k",
        "--curl",
        "http://localhost:8000/echo",
        "--method",
        "post",
        "--v1",
    )
    words = shlex.split(output)
    assert (
        code == 0
        and words[:4] == ["curl", "-sS", "-X", "POST"]
        and words[-1] == "http://localhost:8000/echo"
    )
    assert f"{v1.CERTIFICATE_ID_HEADER}: cert-a" in words


def test_sign_adds_a_fresh_128_bit_nonce_unless_told_not_to(cli):
    import base64
    import re

    nonces = set()
    for _ in range(2):
        code, output = cli("sign", "cert-a", "--key", "k")
        nonce = re.search(r';nonce="([^"]+)"', output).group(1)
        assert code == 0 and len(base64.urlsafe_b64decode(nonce + "==")) == 16
        nonces.add(nonce)
    assert len(nonces) == 2
    assert "nonce=" not in cli("sign", "cert-a", "--key", "k", "--no-nonce")[1]


def test_sign_rejects_a_malformed_certificate_id(cli):
    assert cli("sign", "bad id", "--key", "k")[0] == 2


def test_the_console_script_is_installed_and_usage_errors_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "customer_auth.cli", "frobnicate"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "invalid choice" in result.stderr
    script = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib.metadata as m; "
            "print([e.value for e in m.entry_points(group='console_scripts') if e.name == "
            "'customer-verification'])",
        ],
        capture_output=True,
        text=True,
    )
    assert "customer_auth.cli:main" in script.stdout


def ed25519_files(tmp_path, name="key"):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    public = private.public_key()
    pem = tmp_path / f"{name}.pub.pem"
    pem.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    b64 = tmp_path / f"{name}.pub.b64"
    b64.write_text(__import__("base64").b64encode(raw).decode() + "\n")
    secret = tmp_path / f"{name}.pem"
    secret.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pem, b64, secret, raw


def test_add_with_a_public_key_stores_no_secret(cli, store, tmp_path):
    pem, b64, _, raw = ed25519_files(tmp_path)
    for certificate_id, path in (("cert-pem", pem), ("cert-b64", b64)):
        code, output = cli("add", certificate_id, "--public-key", str(path))
        assert code == 0 and "client_key" not in output and "public key registered" in output
        credential = store.fetch(certificate_id)
        assert credential.public_key == raw and credential.client_key is None


def test_a_file_that_is_no_ed25519_public_key_is_refused(cli, tmp_path, customers):
    bad = tmp_path / "bad"
    bad.write_text("not a key")
    assert cli("add", "cert-x", "--public-key", str(bad))[0] == 2
    assert customers.execute("SELECT count(*) FROM customer") == [(0,)]


def test_rotate_works_for_both_kinds_and_refuses_to_mix_them(cli, store, tmp_path):
    pem, _, _, first = ed25519_files(tmp_path, "first")
    second_pem, _, _, second = ed25519_files(tmp_path, "second")
    cli("add", "cert-pk", "--public-key", str(pem))
    code, output = cli("rotate", "cert-pk", "--public-key", str(second_pem), "--grace", "60")
    assert code == 0 and "new public key registered" in output
    assert store.fetch("cert-pk").public_keys_valid_at(time.time()) == (second, first)
    # a public-key customer gets a new public key, not a secret
    assert cli("rotate", "cert-pk")[0] == 2
    cli("add", "cert-secret")
    assert cli("rotate", "cert-secret", "--public-key", str(pem))[0] == 2


def test_sign_prints_rfc9421_headers_that_an_independent_verifier_accepts(cli, tmp_path):
    import types

    from http_message_signatures import HTTPMessageVerifier, HTTPSignatureKeyResolver, algorithms
    from http_message_signatures.structures import CaseInsensitiveDict

    body = tmp_path / "body.json"
    body.write_bytes(b'{"amount": 10}')
    code, output = cli(
        "sign",
        "cert-a",
        "--key",
        "k",
        "--method",
        "post",
        "--url",
        "http://gw.test/pay?x=1",
        "--body",
        str(body),
    )
    headers = CaseInsensitiveDict(line.split(": ", 1) for line in output.splitlines())
    assert code == 0 and {"signature-input", "signature", "content-digest"} <= {
        name.lower() for name in headers
    }

    class Key(HTTPSignatureKeyResolver):
        def resolve_public_key(self, key_id):
            assert key_id == "cert-a"
            return b"k"

    message = types.SimpleNamespace(method="POST", url="http://gw.test/pay?x=1", headers=headers)
    (result,) = HTTPMessageVerifier(
        signature_algorithm=algorithms.HMAC_SHA256, key_resolver=Key()
    ).verify(message)
    assert {"@method", "@path", "@query", "content-digest"} <= {
        str(c).strip('"') for c in result.covered_components
    }


def test_sign_with_a_private_key_and_a_ready_curl_command(cli, tmp_path):
    _, _, private, _ = ed25519_files(tmp_path)
    code, output = cli(
        "sign", "cert-a", "--private-key", str(private), "--curl", "http://localhost:8000/echo?a=1"
    )
    words = shlex.split(output)
    assert (
        code == 0
        and words[:4] == ["curl", "-sS", "-X", "GET"]
        and words[-1] == "http://localhost:8000/echo?a=1"
    )
    assert any(
        word.startswith("Signature-Input: sig1=") and 'alg="ed25519"' in word for word in words
    )


# -- the CLI says what to do (#25) ---------------------------------------------------------------


def test_the_plugins_read_only_role_is_told_to_use_the_admin_role(
    database_url, customers, monkeypatch, capsys
):
    import psycopg2.extensions
    from conftest import execute

    execute(
        database_url,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cv_cli_reader') THEN "
        "CREATE ROLE cv_cli_reader LOGIN PASSWORD 'reader-pw' IN ROLE customer_reader; END IF; "
        "END $$",
    )
    monkeypatch.setenv(
        "DATABASE_URL",
        psycopg2.extensions.make_dsn(database_url, user="cv_cli_reader", password="reader-pw"),
    )
    assert command_line.main(["add", "cert-z"]) == command_line.EXIT_DATABASE
    err = capsys.readouterr().err
    assert "permission denied" in err and "admin role" in err and "reader-pw" not in err


def test_a_database_without_the_table_is_told_to_load_the_schema(postgres, monkeypatch, capsys):
    import uuid

    from conftest import dsn_for_database, execute

    dsn, _server = postgres
    name = f"cv_empty_{uuid.uuid4().hex[:8]}"
    execute(dsn, f"CREATE DATABASE {name}")
    try:
        monkeypatch.setenv("DATABASE_URL", dsn_for_database(dsn, name))
        assert command_line.main(["list"]) == command_line.EXIT_DATABASE
        assert "customer_schema.sql" in capsys.readouterr().err
    finally:
        execute(dsn, f"DROP DATABASE {name} WITH (FORCE)")


@pytest.mark.parametrize(
    "argv",
    [
        # which one is signed?
        [
            "sign",
            "cert-a",
            "--key",
            "k",
            "--url",
            "http://a/",
            "--curl",
            "http://b/",
        ],
        ["sign", "cert-a", "--key", ""],
        ["sign", "cert-a", "--key", "  "],
    ],
)
def test_sign_refuses_ambiguous_or_empty_input(cli, argv, capsys):
    assert cli(*argv)[0] == 2
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("command", ["add", "rotate", "revoke", "list", "sign"])
def test_every_commands_help_names_the_database_the_roles_and_the_exit_codes(command, capsys):
    assert command_line.main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert (
        "DATABASE_URL" in text
        and "PGHOST" in text
        and "admin role" in text
        and "read-only role" in text
    )
    assert "exit codes" in text and "5 database" in text


def test_version_is_the_packages():
    import importlib.metadata

    import customer_verification

    result = subprocess.run(
        [sys.executable, "-m", "customer_auth.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.split() == ["customer-verification", customer_verification.version]
    assert importlib.metadata.version("customer-verification") == customer_verification.version


def test_every_argument_of_every_command_has_a_help_text_and_every_help_names_the_database():
    import argparse

    from customer_auth.cli import _parser

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(_parser()):
        assert "DATABASE_URL" in parser.format_help() and "exit codes" in parser.format_help()
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help, (parser.prog, action.dest)


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
    assert len(output.splitlines()) == 1 + 6  # the header row, then each customer


# -- as a person expects --------------------------------------------------------------------------


def test_a_second_rotation_within_the_first_grace_is_refused_unless_forced(cli, store, capsys):
    first = printed_key(cli("add", "cert-r2")[1])
    second = printed_key(cli("rotate", "cert-r2", "--grace", "600")[1])
    code, _ = cli("rotate", "cert-r2")
    assert code == command_line.EXIT_USAGE
    assert "still rotating" in capsys.readouterr().err  # and nothing changed:
    assert store.fetch("cert-r2").keys_valid_at(time.time()) == (second, first)
    third = printed_key(cli("rotate", "cert-r2", "--force", "--grace", "60")[1])
    assert store.fetch("cert-r2").keys_valid_at(time.time()) == (third, second)


def test_a_revoked_certificate_is_named_so_by_add_and_brought_back_by_restore(cli, store, capsys):
    key = printed_key(cli("add", "cert-back")[1])
    cli("revoke", "cert-back")
    assert cli("add", "cert-back")[0] == command_line.EXIT_EXISTS
    assert "is revoked (restore brings it back)" in capsys.readouterr().err
    code, output = cli("restore", "cert-back")
    assert code == 0 and store.fetch("cert-back").keys_valid_at(time.time()) == (key,)
    cli("revoke", "cert-back")
    new = printed_key(cli("restore", "cert-back", "--new-key")[1])
    assert store.fetch("cert-back").keys_valid_at(time.time()) == (new,) and new != key


def test_list_has_a_header_row(cli):
    cli("add", "cert-listed")
    assert cli("list")[1].splitlines()[0] == "customer_id\tcertificate_id\tstatus"


def test_sign_adds_headers_covers_them_when_asked_and_a_json_body_gets_its_content_type(
    cli, tmp_path
):
    body = tmp_path / "order.json"
    body.write_text('{"id": 7}')
    code, output = cli(
        "sign", "cert-1", "--key", "k", "--method", "POST", "--body", str(body),
        "--header", "X-Tenant: acme", "--cover", "x-tenant", "--curl", "https://api.test/orders",
    )  # fmt: skip
    assert code == 0
    assert "'Content-Type: application/json'" in output and "'X-Tenant: acme'" in output
    assert '"x-tenant"' in output  # in Signature-Input: covered


def test_a_customers_life_runs_as_the_page_shows_it(database_url, customers, tmp_path):
    """docs/customers.md's opening session, in bash, against the reader's database (the page's
    `export DATABASE_URL=...` line names the reader's; the test's is given instead)."""
    from conftest import fenced_block, run_in_bash

    session = fenced_block("customers.md", "A customer's life").splitlines()
    assert session[0].startswith("export DATABASE_URL=")
    run = run_in_bash("\n".join(session[1:]), tmp_path, DATABASE_URL=database_url)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("client_key: ") == 2  # add, rotate
    assert "customer_id\tcertificate_id\tstatus" in run.stdout
    assert "revoked my-certificate" in run.stdout
    assert "restored my-certificate (with the keys it had)" in run.stdout
