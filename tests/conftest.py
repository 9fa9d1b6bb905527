"""Shared fixtures: a real Postgres (a throwaway server, or the one ``--test-postgres`` names), a
fresh database with the schema per test module, and helpers to add customers.

The tests never use a database from the environment: ``DATABASE_URL`` exported for an operator's
work is ignored, so a test run cannot create or drop databases on that server."""

import contextlib
import json
import os
import pathlib
import re
import subprocess
import sys
import uuid

import psycopg2
import psycopg2.extensions
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fenced_block(page, title):
    """The code of the fenced block titled ``title`` (```lang title="..."```) on docs/``page``:
    what a reader copies is what the test runs."""
    text = (ROOT / "docs" / page).read_text()
    found = re.search(r'^```\w+ title="' + re.escape(title) + r'"\n(.*?)^```$', text, re.S | re.M)
    assert found, f'docs/{page} has no block titled "{title}"'
    return found.group(1)


def run_in_bash(script, cwd, **env):
    """Runs a block the pages show in bash (-euo pipefail) in ``cwd``, with the package's commands
    first on the PATH and nothing else of the test's environment but ``env``."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env={"PATH": path, "HOME": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


SCHEMA = (ROOT / "customer_schema.sql").read_text()


def pytest_configure(config):
    """Nothing started by a test (a plugin server, a service, the CLI) may reach a database named
    by the environment: every one is given the test's own."""
    from customer_auth.store.connection import LIBPQ_VARIABLES

    for name in ("DATABASE_URL", "CUSTOMER_VERIFICATION_LISTENER_URL", *LIBPQ_VARIABLES):
        os.environ.pop(name, None)


def pytest_addoption(parser):
    parser.addoption(
        "--test-postgres",
        metavar="URL",
        help="a Postgres server the tests may create and drop databases on, as a superuser "
        "(default: a throwaway one)",
    )


@pytest.fixture(scope="session")
def postgres(request):
    """A Postgres server: the one ``--test-postgres`` names, else a throwaway one for this
    session. Yields ``(dsn, server)``; ``server`` is None for an external one (fault tests need
    their own)."""
    named = request.config.getoption("--test-postgres")
    if named:
        yield named, None
        return
    from devtools.throwaway_postgres import ThrowawayPostgres

    with ThrowawayPostgres() as server:
        yield server.dsn, server


def dsn_for_database(dsn, database):
    return psycopg2.extensions.make_dsn(dsn, dbname=database)


def admin_connection(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def execute(dsn, statement):
    conn = admin_connection(dsn)
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def database_url(postgres):
    """A fresh database holding the schema, dropped after the module's tests."""
    dsn, _server = postgres
    name = f"cv_test_{uuid.uuid4().hex[:12]}"
    execute(dsn, f"CREATE DATABASE {name}")
    url = dsn_for_database(dsn, name)
    execute(url, SCHEMA)
    yield url
    execute(dsn, f"DROP DATABASE {name} WITH (FORCE)")


class Customers:
    """Writes customers with plain SQL, as an operator or another system would."""

    def __init__(self, url):
        self.url = url
        self.conn = admin_connection(url)

    def execute(self, sql, *params):
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def add(self, certificate, client_key, **authentication):
        rows = self.execute(
            "INSERT INTO customer (certificate, authentication) VALUES (%s, %s) RETURNING "
            "uuid::text",
            certificate,
            json.dumps({"client_key": client_key, **authentication}),
        )
        return rows[0][0]

    def set_authentication(self, certificate, **authentication):
        self.execute(
            "UPDATE customer SET authentication = authentication || %s::jsonb WHERE certificate = "
            "%s",
            json.dumps(authentication),
            certificate,
        )

    def clear(self):
        self.execute("DELETE FROM customer")


@pytest.fixture
def customers(database_url):
    customers = Customers(database_url)
    customers.clear()
    yield customers
    customers.conn.close()


@pytest.fixture
def credentials(database_url):
    """The plugin's credential store on the test database (its listener is not started)."""
    from customer_auth.store.connection import Settings
    from customer_auth.store.credentials import Credentials

    credentials = Credentials(Settings(dsn=database_url, pool_size=2, timeout=2.0))
    yield credentials
    credentials.close()


@pytest.fixture
def table_gone(customers):
    """Makes every lookup fail in the database, as a broken or dropped table would."""

    class TableGone:
        def __enter__(self):
            customers.execute("ALTER TABLE customer RENAME TO customer_away")

        def __exit__(self, *_):
            customers.execute("ALTER TABLE customer_away RENAME TO customer")

    return TableGone()


def short_directory():
    """A unix socket path must stay under 108 bytes, which pytest's tmp_path can exceed."""
    import tempfile

    return tempfile.mkdtemp(prefix="cv-")


class ServerMode:
    """How the plugin server is started: its flags and the environment that picks its transport."""

    def __init__(self, flags, env=None):
        self.flags, self.env = list(flags), dict(env or {})


SHIPPED_FLAGS = ["-g", "--no-lua-style"]  # kong.conf's start_cmd
TRANSPORT = "CUSTOMER_VERIFICATION_TRANSPORT"
# The ways the plugin server is tested: the shipped one (the lean transport, gevent, Python-style
# PDK returns), stock kong-pdk in that same mode, and kong-pdk's defaults (threads, Lua-style).
SERVER_MODES = {
    "lean": ServerMode(SHIPPED_FLAGS, {TRANSPORT: "lean"}),
    "kong-pdk": ServerMode(SHIPPED_FLAGS, {TRANSPORT: "kong-pdk"}),
    "threading": ServerMode([]),
}
# Tests that name no mode: the shipped flags on the transport the environment names, so that
# ``CUSTOMER_VERIFICATION_TRANSPORT=kong-pdk pytest`` runs them all on stock kong-pdk.
SHIPPED = ServerMode(SHIPPED_FLAGS)


class Gateway:
    """The real plugin server process behind the Kong stand-in."""

    def __init__(self, server, kong):
        self.server = server
        self.kong = kong

    def send(self, header_lines, plugin_id="plugin", **request):
        """``request``: method, target, scheme, body, as Kong's Request takes them."""
        from devtools.kong_standin import Request

        return self.kong.handle(Request(header_lines, **request), plugin_id)

    def close(self):
        self.kong.close()
        self.server.stop()


def start_gateway(
    script, name, mode=SHIPPED, env=None, config=None, kong_timeout=10.0, fail_closed=None
):
    """``mode``: a name in SERVER_MODES, or a ServerMode."""
    import shutil

    from devtools.kong_standin import KongStandIn, PluginServer

    mode = SERVER_MODES.get(mode) if isinstance(mode, str) else mode
    directory = short_directory()
    server = PluginServer(
        script, directory, name, mode.flags, env={**mode.env, **(env or {})}
    ).start()
    kong = KongStandIn.query(
        server.query_command, server.socket_path, timeout=kong_timeout, fail_closed=fail_closed
    )
    kong.configure("plugin", config)
    kong.error_log.follow(server.log_path)  # Kong copies the server's output into its log, at INFO
    gateway = Gateway(server, kong)
    gateway.directory = directory
    gateway.cleanup = lambda: (gateway.close(), shutil.rmtree(directory, ignore_errors=True))
    return gateway


@contextlib.contextmanager
def serving(command, env):
    """A test app (tests/middleware/apps) or an example service (examples/) in a real server:
    ``command`` runs it on the port it is given; yields the base URL once /health answers, and
    stops the server after."""
    import socket
    import subprocess
    import time

    import requests

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "tests" / "middleware" / "apps"), str(ROOT / "examples"), str(ROOT)]
        ),
    }
    process = subprocess.Popen(
        command(port),
        cwd=ROOT / "tests" / "middleware" / "apps",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/health", timeout=1)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, (
                    process.stderr.read().decode()
                )
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(params=list(SERVER_MODES))
def server_mode(request):
    return request.param


@pytest.fixture
def gateway(database_url, server_mode):
    gateway = start_gateway(
        ROOT / "customer_verification.py",
        "customer_verification",
        server_mode,
        env={"DATABASE_URL": database_url},
    )
    yield gateway
    gateway.cleanup()


@pytest.fixture(autouse=True)
def operator_log(monkeypatch):
    """A fresh operator log per test: the process's one would carry problems one test caused
    (and its rate limit) into the next. Yields the log the in-process plugin hands to Kong."""
    import logging

    from customer_auth.kong import plugin
    from customer_auth.kong.operator_log import LOGGER_NAME, OperatorLog

    logger, fresh = logging.getLogger(LOGGER_NAME), OperatorLog()
    installed = plugin.OPERATOR_LOG
    logger.removeHandler(installed)
    logger.addHandler(fresh)
    monkeypatch.setattr(plugin, "OPERATOR_LOG", fresh)
    yield fresh
    logger.removeHandler(fresh)
    logger.addHandler(installed)
