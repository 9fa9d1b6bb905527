"""Connections to the customers database: settings from the environment, every wait bounded.

Connection settings come from the environment only (``DATABASE_URL`` or libpq's ``PG*``
variables, optionally from the dotenv file named by ``CUSTOMER_VERIFICATION_ENV_FILE``), never from
Kong's plugin config. Nothing connects until the first lookup.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from customer_auth import metrics
from customer_auth.errors import InvalidSettings, StoreUnavailable

Connection = psycopg2.extensions.connection
Number = TypeVar("Number", int, float)

ENV_FILE = "CUSTOMER_VERIFICATION_ENV_FILE"
POOL_SIZE = "CUSTOMER_VERIFICATION_POOL_SIZE"
DB_TIMEOUT = "CUSTOMER_VERIFICATION_DB_TIMEOUT"
LISTENER_URL = "CUSTOMER_VERIFICATION_LISTENER_URL"


@dataclasses.dataclass(frozen=True)
class Settings:
    dsn: str  # one URL for the whole cluster: libpq's multi-host syntax lists primary and standbys
    pool_size: int
    timeout: float
    listener_dsn: str = ""  # the change listener's, when it must bypass a transaction-mode pool
    problem: str = ""  # why these settings cannot work: every connection refuses with it

    @classmethod
    def from_environment(cls) -> Settings:
        """The settings, each checked: a bad one never raises here (the plugin must still
        answer, closed), it becomes ``problem``, which names the variable and never its value."""
        problems: list[str] = []
        env_file = os.environ.get(ENV_FILE)
        if env_file:
            if os.path.isfile(env_file) and os.access(env_file, os.R_OK):
                import dotenv

                dotenv.load_dotenv(env_file, override=False)
            else:
                problems.append(f"{ENV_FILE} names no readable file")
        pool_size = _number(POOL_SIZE, "4", int, 1, 1000, "a whole number of connections", problems)
        timeout = _number(DB_TIMEOUT, "2", float, 0.1, 300, "a number of seconds", problems)
        return cls(
            dsn=os.environ.get("DATABASE_URL", ""),  # empty: libpq reads PGHOST, PGUSER, ...
            pool_size=pool_size,
            timeout=timeout,
            listener_dsn=os.environ.get(LISTENER_URL, ""),
            problem="; ".join(problems),
        )


def _number(
    name: str,
    default: str,
    kind: Callable[[str], Number],
    low: float,
    high: float,
    what: str,
    problems: list[str],
) -> Number:
    """The variable's value as ``kind`` within [low, high]; the default, and a problem, if not."""
    try:
        value: Number | None = kind(os.environ.get(name, "").strip() or default)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:  # also refuses nan
        problems.append(f"{name} must be {what} from {low:g} to {high:g}")
        return kind(default)
    return value


def _wait_with_deadline(timeout: float) -> Callable[[Connection], None]:
    """A psycopg2 wait callback that gives up after ``timeout`` seconds without progress.

    libpq's connect_timeout and the server's statement_timeout do not cover a network that
    stops answering; this does. Waiting through select() also makes psycopg2 cooperative when
    gevent has patched select (the plugin server's gevent mode).
    """

    def wait(conn: Connection) -> None:
        while True:
            state = conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                ready = select.select([conn.fileno()], [], [], timeout)[0]
            elif state == psycopg2.extensions.POLL_WRITE:
                ready = select.select([], [conn.fileno()], [], timeout)[1]
            else:
                raise psycopg2.OperationalError(f"unexpected poll state {state}")
            if not ready:
                raise psycopg2.OperationalError(f"no answer from the database within {timeout} s")

    return wait


# libpq's environment variables the deployment passes on (plugin-server-env.conf): with
# DATABASE_URL empty, or to complete it. The first three alone name a database.
LIBPQ_TARGET_VARIABLES = ("PGHOST", "PGHOSTADDR", "PGSERVICE")
LIBPQ_VARIABLES = LIBPQ_TARGET_VARIABLES + (
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGCONNECT_TIMEOUT",
)


def check_dsn(dsn: str) -> None:
    """Refuses a ``DATABASE_URL`` that libpq would reject, or misread, by quoting its secrets.

    A '@', '/' or ':' in a password must be percent-encoded; libpq otherwise takes what follows
    it for the host or the port and names that part, a piece of the password, in its error.
    """
    if not dsn and not any(os.environ.get(name) for name in LIBPQ_TARGET_VARIABLES):
        raise InvalidSettings(
            "DATABASE_URL is not set (nor libpq's PGHOST or PGSERVICE): no database to ask"
        )
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as error:
        hint = (
            "a '%' must be written %25"
            if "percent-encoded" in str(error)
            else "expected postgresql://user:password@host:port/database or key=value pairs"
        )
        raise InvalidSettings(f"DATABASE_URL is not a valid connection URL ({hint})") from None
    if "@" in params.get("host", ""):
        raise InvalidSettings(
            "DATABASE_URL is not a valid connection URL (an '@' in the password must be written "
            "%40)"
        )
    if not all(
        port.strip().isdigit() or not port.strip() for port in params.get("port", "5432").split(",")
    ):
        raise InvalidSettings(
            "DATABASE_URL is not a valid connection URL (the port is not a number; "
            "a '/' or ':' in the password must be written %2F or %3A)"
        )


NETWORK_GRACE = 0.5  # seconds past the database timeout before silence counts as a dead network

# Where a connection goes among the hosts of a multi-host URL (libpq picks, in this order of wish):
LOOKUPS = "lookups"  # a standby when one answers, spread over them; else the primary
PRIMARY = "primary"  # the primary: writes, and reads that must not lag
LISTENER = "listener"  # the primary (NOTIFY reaches its sessions only), by listener_dsn if set


def _session_attributes(dsn: str, role: str) -> dict[str, str]:
    """libpq's choice among the hosts of ``dsn`` for ``role``."""
    if role in (PRIMARY, LISTENER):
        return {"target_session_attrs": "primary"}
    if "target_session_attrs" in psycopg2.extensions.parse_dsn(dsn):
        return {}  # the operator chose
    return {"target_session_attrs": "prefer-standby", "load_balance_hosts": "random"}


def connect(
    settings: Settings, role: str = LOOKUPS, application_name: str = "customer_verification"
) -> Connection:
    """One connection for ``role`` with every wait bounded by ``settings.timeout``."""
    if settings.problem:
        raise InvalidSettings(settings.problem)
    dsn = (settings.listener_dsn or settings.dsn) if role == LISTENER else settings.dsn
    check_dsn(dsn)
    session_attributes = _session_attributes(dsn, role)
    # The server's own timeouts come first when it is alive (their errors say what happened);
    # the client's deadline, a little later, is for a network that stopped answering.
    psycopg2.extensions.set_wait_callback(_wait_with_deadline(settings.timeout + NETWORK_GRACE))
    timeout_ms = int(settings.timeout * 1000)
    return psycopg2.connect(
        dsn,
        connection_factory=None,
        cursor_factory=None,
        connect_timeout=max(1, round(settings.timeout)),
        options=f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
        application_name=application_name,
        **session_attributes,
    )


def describe(error: BaseException) -> str:
    """The first line of a driver error: enough for an operator, never a DSN or a password."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


class Pool:
    """At most ``size`` connections; callers wait up to ``timeout`` for one.

    psycopg2's own pools raise instead of waiting, and do not replace dead connections.
    """

    def __init__(self, settings: Settings, role: str = LOOKUPS, size: int | None = None) -> None:
        self._settings = settings
        self._role = role
        self._slots = threading.BoundedSemaphore(size or settings.pool_size)
        self._idle: list[Connection] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(self, fresh: bool = False) -> Iterator[tuple[Connection, bool]]:
        """Yields ``(connection, reused)``; a connection that raised is closed, not returned."""
        if not self._slots.acquire(timeout=self._settings.timeout):
            raise StoreUnavailable("all database connections are busy")
        metrics.POOL_IN_USE.inc()
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle and not fresh else None
            reused = conn is not None
            if conn is None:
                try:
                    conn = connect(self._settings, self._role)
                except InvalidSettings as error:  # no database can answer until it is fixed
                    raise StoreUnavailable(f"{error.name}: {error}") from None
                conn.autocommit = True
            try:
                yield conn, reused
            except BaseException:
                conn.close()
                raise
            with self._lock:
                self._idle.append(conn)
        finally:
            metrics.POOL_IN_USE.dec()
            self._slots.release()

    def fetch_all(self, statement: str, parameters: Sequence[object]) -> list[tuple[Any, ...]]:
        """The rows of one statement; StoreUnavailable when the database cannot answer.

        A reused connection may have died with a database restart (or its server went down), and
        then its idle siblings did too: they are dropped and the statement is retried once on a
        new connection, which libpq may make to another host, so a restart costs no request."""
        attempt = 1
        while True:
            reused = False
            try:
                with self.connection(fresh=attempt == 2) as (conn, reused), conn.cursor() as cursor:
                    cursor.execute(statement, parameters)
                    return cursor.fetchall()
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as error:
                if attempt == 2 or not reused or isinstance(error, psycopg2.errors.QueryCanceled):
                    raise StoreUnavailable(describe(error)) from None
                self.close()
                attempt = 2
            except psycopg2.Error as error:
                raise StoreUnavailable(describe(error)) from None

    def close(self) -> None:
        """Closes the idle connections; also what to do when one was found dead (a restart)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
