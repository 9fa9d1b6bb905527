"""Kong's own plugin-server Lua in a real nginx, in front of the real plugin server.

Kong cannot be installed here, but the part of it that talks to an external plugin
(``kong/runloop/plugin_servers/``) is plain OpenResty Lua: this runs it unchanged, read from a
Kong 3.9.x source tree named by ``KONG_SOURCE`` (a checkout of Kong at tag 3.9.1, or an installed
Kong's Lua tree, the directory that holds ``kong/``), in Debian's nginx with lua-nginx-module
(``apt-get install nginx-light libnginx-mod-http-lua lua-messagepack lua-cjson``). What Kong's
runloop and PDK would add around it is in ``bridge_gateway.lua`` and ``kong_pdk_standin.lua``.

    bridge = KongBridge(kong_source, plugin_server, routes={"/a": config}).start()
    status, headers, body = bridge.request("GET", "/a/x", headers=[...])

The plugin server is started by the caller (``devtools.kong_standin.PluginServer``), not by
Kong's process manager (``ngx.pipe`` needs OpenResty's own nginx build): a test restarts it as
Kong would respawn it.
"""

import grp
import http.client
import itertools
import json
import os
import pathlib
import pwd
import shutil
import subprocess

from devtools.kong_standin import schema_defaults
from devtools.local_ports import free_port, wait_until_listening

HARNESS = pathlib.Path(__file__).resolve().parent
KONG_SOURCE = "KONG_SOURCE"
BRIDGE_MODULE = pathlib.Path("kong/runloop/plugin_servers/rpc/mp_rpc.lua")
LUA_MODULES = pathlib.Path("/usr/lib/nginx/modules")


def kong_source():
    """The Kong source tree ``KONG_SOURCE`` names, or the reason it cannot be used."""
    path = os.environ.get(KONG_SOURCE, "").strip()
    if not path:
        return None, f"{KONG_SOURCE} is unset (a Kong 3.9.x source tree, the directory with kong/)"
    if not (pathlib.Path(path) / BRIDGE_MODULE).is_file():
        return None, f"{KONG_SOURCE}={path} holds no {BRIDGE_MODULE}"
    return pathlib.Path(path), None


def missing_nginx():
    """Why nginx with lua-nginx-module cannot run here, or None."""
    if not shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin"):
        return "nginx is not installed (apt-get install nginx-light libnginx-mod-http-lua)"
    if not (LUA_MODULES / "ngx_http_lua_module.so").exists():
        return "lua-nginx-module is not installed (apt-get install libnginx-mod-http-lua)"
    return None


class KongBridge:
    """nginx running Kong's plugin-server bridge for one external plugin.

    ``routes``: path prefix -> the plugin's config on that route (None: no plugin there); Kong
    fills the schema's defaults and stamps ``__seq__`` and ``__plugin_id`` as it stores it.
    ``fail_closed``: the deployment's pre- and post-function (kong.yml).
    """

    def __init__(
        self,
        source,
        plugin_server,
        routes,
        consumers=(),
        workers=2,
        fail_closed=True,
        customer_id_header="X-Customer-Id",
        log_level="notice",
    ):
        self.source = pathlib.Path(source)
        self.server = plugin_server
        self.prefix = pathlib.Path(plugin_server.socket_path).parent / "nginx"
        self.port, self.h2_port = free_port(), free_port()
        self.workers = workers
        self.log_level = log_level
        self._sequence = itertools.count(1)
        info = json.loads(
            subprocess.run(
                plugin_server.query_command, check=True, capture_output=True, env=plugin_server.env
            ).stdout
        )[0]
        self.plugin_name = info["Name"]
        self._defaults = schema_defaults(info["Schema"])
        self.gateway = {
            "plugin_name": self.plugin_name,
            # as Kong's conf_loader builds it; no start_command: the caller runs the server
            "pluginserver": {
                "name": self.plugin_name,
                "socket": plugin_server.socket_path,
                "query_command": " ".join(plugin_server.query_command),
            },
            "routes": [
                {"path": path, "plugins": [] if config is None else [self.stored(path, config)]}
                for path, config in routes.items()
            ],
            "consumers": list(consumers),
            "fail_closed": fail_closed,
            "customer_id_header": customer_id_header,
        }
        self.process = None

    def stored(self, path, config):
        """The config as Kong stores a plugin entity: defaults, ``__seq__``, ``__plugin_id``."""
        return {
            "config": {
                **self._defaults,
                **config,
                "__seq__": next(self._sequence),
                "__plugin_id": f"plugin-on-{path.strip('/') or 'root'}",
            }
        }

    # -- nginx ---------------------------------------------------------------------------------
    def start(self, timeout=15):
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "client_body").mkdir(exist_ok=True)
        gateway_path = self.prefix / "gateway.json"
        gateway_path.write_text(json.dumps(self.gateway))
        conf = (
            (HARNESS / "nginx.conf")
            .read_text()
            .format(
                lua_modules=LUA_MODULES,
                workers=self.workers,
                user=pwd.getpwuid(os.getuid()).pw_name,
                group=grp.getgrgid(os.getgid()).gr_name,
                prefix=self.prefix,
                log_level=self.log_level,
                harness=HARNESS,
                kong_source=self.source,
                gateway_config=gateway_path,
                port=self.port,
                h2_port=self.h2_port,
            )
        )
        (self.prefix / "nginx.conf").write_text(conf)
        nginx = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
        self.process = subprocess.Popen(
            [
                nginx,
                "-p",
                str(self.prefix),
                "-c",
                str(self.prefix / "nginx.conf"),
                "-e",
                str(self.prefix / "error.log"),
            ],
            env={**os.environ, **self.server.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_listening(
            self.port, self.process, timeout, lambda: f"nginx did not start:\n{self.error_log()}"
        )
        return self

    def reload(self):
        """nginx's reload: new workers (with empty caches), old ones finish their requests."""
        self.process.send_signal(1)  # SIGHUP

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)

    def error_log(self):
        try:
            return (self.prefix / "error.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def errors(self):
        """The lines Kong would write at [error] or worse."""
        return [
            line
            for line in self.error_log().splitlines()
            if any(f"[{level}]" in line for level in ("error", "crit", "alert", "emerg"))
        ]

    def worker_pids(self):
        master = self.process.pid
        return sorted(
            int(pid)
            for pid in os.listdir("/proc")
            if pid.isdigit() and _parent_of(int(pid)) == master
        )

    # -- requests -----------------------------------------------------------------------------
    def request(self, method, target, headers=(), body=None, chunked=False, timeout=30):
        """One HTTP/1.1 request on a new connection (each may land on any worker);
        ``(status, headers, body)`` with header names lower-cased."""
        with self.connection(timeout) as connection:
            return connection.request(method, target, headers, body, chunked)

    def connection(self, timeout=30):
        """A keep-alive connection: its requests all reach the worker that accepted it."""
        return Connection(self.port, timeout)

    def http2_url(self, target):
        """The URL of the cleartext HTTP/2 listener (prior knowledge), for curl or httpx."""
        return f"http://127.0.0.1:{self.h2_port}{target}"


class Connection:
    """One HTTP/1.1 client connection to the bridge; ``worker`` is the pid of the nginx worker
    that answered last."""

    def __init__(self, port, timeout):
        self._http = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.worker = None

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self._http.close()

    def request(self, method, target, headers=(), body=None, chunked=False):
        http = self._http
        http.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        names = {name.lower() for name, _ in headers}
        if "host" not in names:
            http.putheader("Host", "gateway.test")
        for name, value in headers:
            http.putheader(name, value)
        if chunked:
            http.putheader("Transfer-Encoding", "chunked")
        elif body is not None and "content-length" not in names:
            http.putheader("Content-Length", str(len(body)))
        http.endheaders()
        if body is not None:
            if chunked:
                for start in range(0, len(body), 65536):
                    part = body[start : start + 65536]
                    http.send(b"%x\r\n%s\r\n" % (len(part), part))
                http.send(b"0\r\n\r\n")
            else:
                http.send(body)
        response = http.getresponse()
        answer = (
            response.status,
            {name.lower(): value for name, value in response.getheaders()},
            response.read(),
        )
        self.worker = int(answer[1].get("x-bridge-worker", 0)) or None
        return answer


def _parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None
