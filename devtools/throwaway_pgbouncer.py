"""A throwaway PgBouncer (Debian's ``pgbouncer`` package) in front of a throwaway Postgres, with
one database name per pool mode: ``<database>_transaction`` and ``<database>_session``."""

import os
import pathlib
import shutil
import subprocess
import tempfile

from devtools.local_ports import free_port, wait_until_listening
from devtools.throwaway_postgres import SERVER_USER, _server_user

PGBOUNCER = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
)


class ThrowawayPgBouncer:
    def __init__(self, server, database="postgres"):
        self.port = free_port()
        self.directory = pathlib.Path(tempfile.mkdtemp(prefix="customer-verification-pgbouncer-"))
        self._user = None
        if os.geteuid() == 0:  # PgBouncer refuses to run as root
            entry = _server_user()
            self._user = SERVER_USER
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        pools = "\n".join(
            f"{database}_{mode} = host=127.0.0.1 port={server.port} dbname={database} "
            f"pool_mode={mode}"
            for mode in ("transaction", "session")
        )
        (self.directory / "users.txt").write_text('"postgres" ""\n')
        self.config = self.directory / "pgbouncer.ini"
        self.config.write_text(f"""[databases]
{pools}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.directory / "users.txt"}
default_pool_size = 10
max_client_conn = 200
logfile = {self.directory / "pgbouncer.log"}
pidfile = {self.directory / "pgbouncer.pid"}
ignore_startup_parameters = extra_float_digits,options
""")
        for path in self.directory.iterdir():
            if self._user:
                shutil.chown(path, self._user)
        self.process = None

    def url(self, mode, database="postgres"):
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}_{mode}"

    def start(self):
        self.process = subprocess.Popen(
            [PGBOUNCER, str(self.config)],
            user=self._user,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_listening(
            self.port, self.process, 10, lambda: f"pgbouncer did not start: {self.log()}"
        )
        return self

    def log(self):
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.stop()
