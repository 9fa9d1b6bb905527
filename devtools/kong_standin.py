"""A stand-in for Kong's side of an external Python plugin, for tests, the demo and benchmarks.

Kong cannot run here, so this speaks Kong 3.9's plugin-server protocol to the real plugin server
process over its unix socket, as Kong's bridge does (kong/runloop/plugin_servers): MessagePack-RPC
``[0, id, method, [arg]]``, a connection from a keepalive pool for every call, StartInstance with
the config JSON Kong stores (schema defaults filled, ``__seq__`` and ``__plugin_id``), a new
instance when the config changes, HandleEvent then Step/StepMultiMap/StepCredential... until
"ret" (never StepError: Kong 3.9 keeps only a PDK function's first return value), nothing sent
back after kong.response.exit/error, Kong's 500 when a PDK function raises or returns a nil it
cannot pack, a retry after "no plugin instance", and Kong's fail-open behaviour when the server
errors or cannot be reached. See shared/kong-plugin-protocol.md; tests/test_kong_bridge.py runs
Kong's own Lua where this is only a model of it.

The same PDK model (``Request``) also backs ``in_process_kong``, the fake ``kong`` object for unit
tests, so both see the same Kong.
"""

import dataclasses
import itertools
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import msgpack

from customer_auth.kong.consumers import is_uuid

TERMINAL_METHODS = {"kong.response.exit", "kong.response.error"}
MULTI_MAP_METHODS = {
    "kong.request.get_headers",
    "kong.request.get_query",
    "kong.response.get_headers",
    "kong.service.response.get_headers",
}
# How Kong steps an entity back (plugin_servers/pb_rpc and mp_rpc): by the PDK function's
# result type.
STEP_METHODS = {
    "kong.client.authenticate": "plugin.StepCredential",
    "kong.client.get_credential": "plugin.StepCredential",
    "kong.client.load_consumer": "plugin.StepConsumer",
    "kong.client.get_consumer": "plugin.StepConsumer",
}
# nginx's default for ngx.req.get_headers(): later header lines are not returned to plugins.
MAX_REQUEST_HEADERS = 100
DEFAULT_ERROR_MESSAGES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    500: "An unexpected error occurred",
    503: "Service unavailable",
}


class KongRaised(BaseException):
    """A PDK function raised inside Kong (a Lua error): the request ends in Kong's 500 and the
    plugin is never answered. A BaseException, so a plugin's ``except Exception`` cannot hide it."""


class NeverAnswered(BaseException):
    """A PDK call after kong.response.exit/error: real Kong never answers it, and the handler
    would wait forever. A BaseException, so a plugin's ``except Exception`` cannot hide it."""


class Request:
    """One proxied request as Kong's PDK exposes it, and what became of it.

    ``header_lines`` are ``(name, value)`` pairs in the order the client sent them.
    ``upstream`` is what the upstream would receive (lower-case name -> list of values);
    ``response`` is ``(status, body)`` when a plugin answered the client itself.
    """

    def __init__(
        self,
        header_lines=(),
        method="GET",
        target="/",
        scheme="http",
        body=b"",
        consumers=(),
        http_version=1.1,
    ):
        # nginx keeps one list of request headers: plugins change it, later plugins read the
        # changed list, and the upstream receives it. A value may be bytes: HTTP allows any byte
        # from 0x80 up, and Kong passes them on as they are (a Lua string is bytes). Here they
        # are held as text whose undecodable bytes are surrogates, which packs back to the bytes.
        self.header_lines = [(name.lower(), _text(value)) for name, value in header_lines]
        self.method = method
        self.target = target  # the raw request target: path and query as received
        self.scheme = scheme
        self.body = body
        # HTTP/1.x frames a body with Content-Length or Transfer-Encoding (nginx reads none
        # without either); HTTP/2 with DATA frames, with or without a Content-Length.
        self.http_version = http_version
        self.body_read = False  # nginx has read the body (kong.request.get_raw_body, get_body)
        self.consumers = list(consumers)  # Kong's consumer entities (the declarative config's)
        self.credential = None  # what kong.client.authenticate set, for later plugins
        self.consumer = None
        self.ctx_shared = {}  # kong.ctx.shared: per request, for later plugins
        self.response = None
        self.response_headers = None
        self.response_method = None
        self.logs = []
        self.pdk_calls = []

    @property
    def upstream(self):
        headers = {}
        for name, value in self.header_lines:
            headers.setdefault(name, []).append(value)
        return headers

    def call(self, method, args):
        """Runs one PDK function as Kong 3.9 does (``call_pdk_method``): only its first return
        value comes back, so a function's ``nil, err`` is None; a Lua error raises KongRaised."""
        if self.response is not None:
            raise NeverAnswered(f"{method} after {self.response_method}")
        self.pdk_calls.append(method)
        handler = _PDK.get(method)
        if handler is None:
            if method.startswith("kong.log.") and method[len("kong.log.") :] in KONG_LOG_FUNCTIONS:
                self.logs.append((method[len("kong.log.") :], args))
                return None
            self.logs.append(("err", ["could not find pdk method: ", method]))
            return None
        return getattr(self, handler)(*args)

    # kong.request
    def get_headers(self, max_headers=MAX_REQUEST_HEADERS):
        headers = {}
        for name, value in self.header_lines[:max_headers]:
            headers.setdefault(name, []).append(value)  # Kong wraps every value in a list
        return headers

    def get_header(self, name):
        values = self.get_headers().get(name.lower())
        return values[0] if values else None

    def get_method(self):
        return self.method

    def get_path_with_query(self):
        return self.target

    def get_scheme(self):
        return self.scheme

    def get_http_version(self):
        return self.http_version

    def get_raw_body(self, max_allowed_file_size=None):
        """Kong 3.9's: a body over nginx's client_body_buffer_size is in a file, read only when
        ``max_allowed_file_size`` allows (0: any size). Otherwise Kong's answer is ``nil, err``,
        and its bridge packs that nil as binary: a Lua error, Kong's 500."""
        body = self._read_body()
        if len(body) > CLIENT_BODY_BUFFER_SIZE and (
            max_allowed_file_size is None
            or max_allowed_file_size < 0
            or 0 < max_allowed_file_size < len(body)
        ):
            raise KongRaised("bad argument to 'pack' (binary expected, got nil)")
        return _text(body)

    def get_body(self, mimetype=None, max_args=None):
        """Kong 3.9's, for a form (nginx reads the body; the first ``max_args`` arguments, or
        None for a body in a file); None for any other type."""
        content_type = mimetype or self.get_header("content-type")
        if not content_type or not content_type.lower().startswith(FORM):
            return None
        body = self._read_body()
        if len(body) > CLIENT_BODY_BUFFER_SIZE:
            return None  # "request body in temp file not supported"
        pairs = urllib.parse.parse_qsl(_text(body), keep_blank_values=True)
        return dict(pairs[: max_args or 100])

    # kong.nginx.get_var: the variables a plugin may ask for here, as nginx holds them
    def get_var(self, name):
        if name == "content_length":
            return self._content_length()
        if name == "request_uri":
            return self.target
        if name == "request":
            version = "2.0" if self.http_version >= 2 else str(self.http_version)
            return f"{self.method} {self.target} HTTP/{version}"
        return None

    def _content_length(self):
        """A Content-Length header as sent; else, once nginx has read a body it framed without
        one (chunked, HTTP/2 DATA), its length; else nothing."""
        declared = self._lines("content-length")
        if declared:
            return declared[0]
        if self.body_read and (
            self._lines("transfer-encoding") or (self.http_version >= 2 and self.body)
        ):
            return str(len(self._framed_body()))
        return None

    def _lines(self, name):
        return [value for line, value in self.header_lines if line == name]

    def _framed_body(self):
        """The body nginx reads: HTTP/1.x without Content-Length or Transfer-Encoding has none
        (what follows the headers would be the next request)."""
        if self.http_version < 2 and not (
            self._lines("content-length") or self._lines("transfer-encoding")
        ):
            return b""
        return self.body

    def _read_body(self):
        self.body_read = True
        return self._framed_body()

    # kong.client
    def authenticate(self, consumer=None, credential=None):
        if consumer is None and credential is None:
            raise KongRaised("either credential or consumer must be provided")
        for entity in (consumer, credential):
            if entity is not None and not isinstance(entity, dict):
                raise KongRaised("consumer and credential must be tables")
        self.consumer, self.credential = consumer, credential

    def get_credential(self):
        return self.credential

    def get_consumer(self):
        return self.consumer

    def load_consumer(self, key, by_username=False):
        """By id when ``key`` is a uuid, then by username when ``by_username``; None if none."""
        if not is_uuid(key) and not by_username:
            raise KongRaised(f"cannot load a consumer with an id that is not a uuid: {key}")
        for field in ("id", "username") if by_username else ("id",):
            for consumer in self.consumers:
                if consumer.get(field) == key:
                    return consumer
        return None

    # kong.ctx.shared (served by Kong's bridge itself)
    def ctx_shared_set(self, key, value):
        self.ctx_shared[key] = value

    def ctx_shared_get(self, key):
        return self.ctx_shared.get(key)

    # kong.service.request
    def set_header(self, name, value):
        self._set_upstream(name, _header_values(name, value, allow_list=False))

    def add_header(self, name, value):
        self.header_lines += [
            (name.lower(), v) for v in _header_values(name, value, allow_list=False)
        ]

    def clear_header(self, name):
        self._set_upstream(_header_name(name), [])

    def set_headers(self, headers):
        if not isinstance(headers, dict):
            raise KongRaised("headers must be a table")
        checked = {
            name: _header_values(name, value, allow_list=True) for name, value in headers.items()
        }
        for name, values in checked.items():
            self._set_upstream(name, values)

    def _set_upstream(self, name, values):
        """Replaces every line of ``name``; an empty list removes the header, as in nginx."""
        name = name.lower()
        self.header_lines = [line for line in self.header_lines if line[0] != name] + [
            (name, v) for v in values
        ]

    # kong.response
    def exit(self, status, body=None, headers=None):
        if isinstance(body, dict):
            body = json.dumps(body)
        self._answer("kong.response.exit", status, body)
        self.response_headers = headers or {}

    def error(self, status, message=None, headers=None):
        body = json.dumps({"message": message or DEFAULT_ERROR_MESSAGES.get(status, "Error")})
        self._answer("kong.response.error", status, body)

    def _answer(self, method, status, body):
        self.response = (int(status), body)
        self.response_method = method


_PDK = {
    "kong.request.get_headers": "get_headers",
    "kong.request.get_header": "get_header",
    "kong.request.get_method": "get_method",
    "kong.request.get_path_with_query": "get_path_with_query",
    "kong.request.get_scheme": "get_scheme",
    "kong.request.get_raw_body": "get_raw_body",
    "kong.request.get_body": "get_body",
    "kong.request.get_http_version": "get_http_version",
    "kong.nginx.get_var": "get_var",
    "kong.ctx.shared.set": "ctx_shared_set",
    "kong.ctx.shared.get": "ctx_shared_get",
    "kong.client.authenticate": "authenticate",
    "kong.client.get_credential": "get_credential",
    "kong.client.get_consumer": "get_consumer",
    "kong.client.load_consumer": "load_consumer",
    "kong.service.request.set_header": "set_header",
    "kong.service.request.add_header": "add_header",
    "kong.service.request.clear_header": "clear_header",
    "kong.service.request.set_headers": "set_headers",
    "kong.response.exit": "exit",
    "kong.response.error": "error",
}


# Kong's nginx template: bodies larger than this are buffered to a file.
CLIENT_BODY_BUFFER_SIZE = 8192
FORM = "application/x-www-form-urlencoded"


def _text(value):
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _header_name(name):
    if not isinstance(name, str):
        raise KongRaised(f"invalid header name {name!r}: expected string")
    return name


def _header_values(name, value, allow_list):
    """Kong's checks.validate_header(s) and normalize_multi_header: "" is sent as " "."""
    _header_name(name)
    if isinstance(value, (bool, int, float)):
        return [str(value).lower() if isinstance(value, bool) else str(value)]
    if isinstance(value, str):
        return [value or " "]
    if allow_list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v or " " for v in value]
    raise KongRaised(f"invalid header value for {name!r}: {type(value).__name__}")


class _InProcessChannel:
    """kong-pdk's handler channel, answered at once from a Request: one put/get is one round
    trip."""

    def __init__(self, request):
        self.request = request
        self.answer = None

    def put(self, message):
        self.answer = (self.request.call(message["Method"], message["Args"]), None)

    def get(self):
        answer, self.answer = self.answer, None
        return answer


def in_process_kong(request, lua_style=True):
    """The ``kong`` object a handler receives from kong-pdk, answered in-process by ``request``.

    It is kong-pdk's own bridge, so return conventions (``(value, err)`` or raising) and the
    immediate return of kong.response.exit are exactly kong-pdk's.
    """
    from kong_pdk.pdk import Kong

    return Kong(_InProcessChannel(request), lua_style).kong


def round_trips(request):
    """HandleEvent plus one Step per PDK call that Kong answers (not exit/error)."""
    return 1 + sum(1 for method in request.pdk_calls if method not in TERMINAL_METHODS)


class FailClosedRule:
    """The deployment's global pre-function and post-function (kong.yml), as Kong runs them:
    the first clears the client's customer id header before any plugin, the second answers 503
    after all plugins when no auth plugin authenticated the request (no credential, no consumer)
    and customer_verification did not let it through as a CORS preflight."""

    def __init__(self, header="X-Customer-Id"):
        self.header = header

    def before(self, request):
        request.clear_header(self.header)

    def after(self, request):
        if (
            request.response is None
            and request.get_credential() is None
            and request.get_consumer() is None
            and not request.ctx_shared.get(PREFLIGHT_MARK)
        ):
            request.exit(503, {"message": "Authentication is temporarily unavailable"})


# kong.log's functions, one per level (err writes at nginx's "error").
KONG_LOG_FUNCTIONS = ("debug", "info", "notice", "warn", "err", "crit", "alert", "emerg")
# nginx's levels, lowest first; Kong's log_level setting names one of them.
LOG_LEVELS = ("debug", "info", "notice", "warn", "error", "crit", "alert", "emerg")
KONG_LOG_LEVEL = {"err": "error"}  # kong.log.err writes at nginx's "error"


class ErrorLog:
    """Kong's error log as an operator reads it: only what is written at ``level`` or above
    (Kong's ``log_level``, by default ``notice``) is kept.

    Kong copies every line the plugin server process prints into this log at INFO
    (``process.lua``): ``follow`` a server's output file to model that. ``kong.log.*`` calls of a
    plugin are written at their own level, Kong's own errors about the bridge at ``error``.
    """

    def __init__(self, level="notice"):
        self.level = level
        self._lines = []  # (level, text)
        self._followed = {}  # path -> bytes already copied
        self._lock = threading.Lock()

    def write(self, level, text):
        level = KONG_LOG_LEVEL.get(level, level)
        if LOG_LEVELS.index(level) >= LOG_LEVELS.index(self.level):
            with self._lock:
                self._lines.append((level, text))

    def follow(self, path):
        self._followed[str(path)] = 0

    def lines(self):
        """``(level, text)`` of every line kept so far, the server's output copied first."""
        for path, copied in list(self._followed.items()):
            try:
                with open(path, "rb") as output:
                    output.seek(copied)
                    data = output.read()
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._followed[path] = copied + len(complete)
            for line in complete.decode(errors="replace").splitlines():
                self.write("info", line)
        with self._lock:
            return list(self._lines)

    def text(self):
        return "\n".join(f"[{level}] {text}" for level, text in self.lines())


# What customer_verification leaves in kong.ctx.shared for a preflight it lets through (kong.yml).
PREFLIGHT_MARK = "customer_verification_preflight"


class RPCError(Exception):
    """The plugin server answered an RPC with an error, or could not be reached."""


class _Connection:
    def __init__(self, path, timeout):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.settimeout(timeout)
        self.socket.connect(path)
        self.unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, unicode_errors="surrogateescape"
        )

    def closed_by_peer(self):
        """nginx watches idle keepalive connections and drops those the peer closed."""
        if not select.select([self.socket], [], [], 0)[0]:
            return False
        try:
            return self.socket.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def call(self, msgid, method, arg):
        # Lua strings are bytes: Kong sends every string as a MessagePack str of those bytes.
        self.socket.sendall(
            msgpack.packb(
                [0, msgid, method, [arg]], use_bin_type=False, unicode_errors="surrogateescape"
            )
        )
        while True:
            for message in self.unpacker:
                kind, answer_id, error, result = message
                assert kind == 1 and answer_id == msgid, f"unexpected RPC answer {message!r}"
                return error, result
            data = self.socket.recv(65536)
            if not data:
                raise ConnectionError("plugin server closed the connection")
            self.unpacker.feed(data)


@dataclasses.dataclass
class Outcome:
    """What the client got and what the upstream would have received."""

    status: int
    body: str
    upstream: dict  # None when the request did not reach the upstream
    round_trips: int
    errors: list  # what Kong would write to its error log
    headers: dict = None  # the response headers a plugin set with its answer

    @property
    def message(self):
        return json.loads(self.body)["message"]


class KongStandIn:
    """Kong's bridge to one external plugin served on ``socket_path``."""

    def __init__(self, socket_path, plugin_info, timeout=10.0, pool_size=64, fail_closed=None):
        self.socket_path = socket_path
        self.info = plugin_info
        self.name = plugin_info["Name"]
        self.phases = plugin_info["Phases"]
        self._defaults = schema_defaults(plugin_info["Schema"])
        self._timeout = timeout
        self._pool_size = pool_size
        self._idle = []
        self._msgids = itertools.count(1)
        self._lock = threading.Lock()
        self._plugins = {}  # plugin id -> config as Kong stores it
        self.consumers = []  # consumer entities, as the declarative config's "consumers"
        self._instances = {}  # plugin id -> (instance id, __seq__)
        self._sequence = itertools.count(1)
        self._fail_closed = fail_closed
        self.error_log = ErrorLog()
        self.calls = 0

    @classmethod
    def query(cls, query_cmd, socket_path, env=None, **options):
        """Runs the plugin's query command as Kong does at start: all of stdout must be JSON."""
        output = subprocess.run(
            query_cmd, check=True, capture_output=True, timeout=30, env=env
        ).stdout
        return cls(socket_path, json.loads(output)[0], **options)

    def configure(self, plugin_id, config=None):
        """Creates or updates a plugin entity; Kong fills schema defaults and stamps it."""
        stored = {
            **self._defaults,
            **(config or {}),
            "__seq__": next(self._sequence),
            "__plugin_id": plugin_id,
        }
        with self._lock:
            self._plugins[plugin_id] = stored
        return stored

    # -- RPC ---------------------------------------------------------------------------------
    def call(self, method, arg):
        """One RPC on a pooled connection, as Kong's Rpc:call."""
        with self._lock:
            connection = None
            while self._idle and connection is None:
                connection = self._idle.pop()
                if connection.closed_by_peer():
                    connection.socket.close()
                    connection = None
            self.calls += 1
        try:
            if connection is None:
                connection = _Connection(self.socket_path, self._timeout)
            error, result = connection.call(next(self._msgids), method, arg)
        except OSError as error:
            if connection is not None:
                connection.socket.close()
            raise RPCError(f"{method}: {error}") from None
        with self._lock:
            if len(self._idle) < self._pool_size:
                self._idle.append(connection)
                connection = None
        if connection is not None:
            connection.socket.close()
        if error is not None:
            raise RPCError(error)
        return result

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.socket.close()

    # -- instances ----------------------------------------------------------------------------
    def _instance_id(self, plugin_id):
        with self._lock:
            config = self._plugins[plugin_id]
            known = self._instances.get(plugin_id)
        if known and known[1] == config["__seq__"]:
            return known[0]
        status = self.call(
            "plugin.StartInstance", {"Name": self.name, "Config": json.dumps(config)}
        )
        with self._lock:
            self._instances[plugin_id] = (status["Id"], config["__seq__"])
        if known:
            try:
                self.call("plugin.CloseInstance", known[0])
            except RPCError:
                pass  # Kong does not care: another worker may have closed it first
        return status["Id"]

    def _reset_instances(self):
        with self._lock:
            self._instances.clear()

    # -- a request -----------------------------------------------------------------------------
    def handle(self, request, plugin_id="plugin", phase="access"):
        """Runs ``phase`` for ``request`` as Kong does and says what the client and upstream see."""
        if not request.consumers:
            request.consumers = self.consumers
        if self._fail_closed:
            self._fail_closed.before(request)
        errors = []
        trips = 0
        for _attempt in range(2):
            try:
                instance_id = self._instance_id(plugin_id)
            except RPCError as error:
                # Kong raises here: the client gets a 500 and the upstream nothing.
                errors.append(f"starting instance: {error}")
                self.error_log.write("error", f"[{self.name}] starting instance: {error}")
                return _kong_raised(trips, errors)
            try:
                trips += self._bridge(request, instance_id, phase)
                break
            except KongRaised as error:
                errors.append(str(error))
                self.error_log.write("error", f"[{self.name}] {error}")
                return _kong_raised(trips, errors)
            except _BridgeError as error:
                trips += error.round_trips
                errors.append(str(error))
                if "no plugin instance" not in str(error).lower():
                    break  # Kong logs it and goes on to the upstream: it fails open
                self._reset_instances()
        if self._fail_closed:
            self._fail_closed.after(request)
        for level, args in request.logs:
            # Kong joins the arguments as they are
            self.error_log.write(level, "".join(map(str, args)))
        for error in errors:
            self.error_log.write("error", f"[{self.name}] {error}")
        if request.response is not None:
            status, body = request.response
            return Outcome(status, body, None, trips, errors, request.response_headers)
        return Outcome(200, json.dumps({"message": "proxied"}), request.upstream, trips, errors)

    def _bridge(self, request, instance_id, phase):
        trips = 1
        try:
            step = self.call("plugin.HandleEvent", {"InstanceId": instance_id, "EventName": phase})
            event_id = step["EventId"]
            while step["Data"] != "ret":
                method, args = step["Data"]["Method"], step["Data"]["Args"] or []
                # KongRaised: nginx ends the request with a 500, nothing more is sent
                result = request.call(method, args)
                step_method = (
                    "plugin.StepMultiMap"
                    if method in MULTI_MAP_METHODS
                    else STEP_METHODS.get(method, "plugin.Step")
                )
                if method in TERMINAL_METHODS:
                    return trips  # nginx has ended the request: Kong sends nothing more
                trips += 1
                step = self.call(step_method, {"EventId": event_id, "Data": result})
        except RPCError as error:
            raise _BridgeError(str(error), trips) from None
        return trips


def _kong_raised(trips, errors):
    """Kong's answer when a Lua error ends the request: its 500, and nothing for the upstream."""
    return Outcome(
        500, json.dumps({"message": "An unexpected error occurred"}), None, trips, errors
    )


class _BridgeError(Exception):
    def __init__(self, message, round_trips):
        super().__init__(message)
        self.round_trips = round_trips


def schema_defaults(schema):
    for field in schema["fields"]:
        if "config" in field:
            return {
                name: spec.get("default")
                for item in field["config"]["fields"]
                for name, spec in item.items()
            }
    return {}


class PluginServer:
    """The plugin server process, started the way Kong starts it (``exec start_cmd``)."""

    def __init__(self, script, prefix, name, flags=(), env=None, python=sys.executable):
        self.command = [python, str(script), "-p", str(prefix), *flags]
        self.query_command = [python, str(script), "--dump"]
        self.socket_path = os.path.join(str(prefix), f"{name}.sock")
        self.env = {**os.environ, **(env or {})}
        self.log_path = os.path.join(str(prefix), f"{name}.log")
        self.process = None

    def start(self, timeout=15):
        if os.path.exists(self.socket_path):
            os.remove(self.socket_path)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=log_file, stderr=log_file
            )
        deadline = time.monotonic() + timeout
        while not self._accepting():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"plugin server did not start; its log:\n{self.log()}")
            time.sleep(0.02)
        return self

    def _accepting(self):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.socket_path)
            return True
        except OSError:
            return False
        finally:
            probe.close()

    def stop(self, kill=False):
        if self.process and self.process.poll() is None:
            self.process.kill() if kill else self.process.terminate()  # Kong sends SIGTERM
            self.process.wait(timeout=10)

    def log(self):
        with open(self.log_path, errors="replace") as log_file:
            return log_file.read()

    def threads(self):
        return int(self._status("Threads"))

    def cpu_times(self):
        """(user, system) CPU seconds the server has used so far: its processes summed (a
        supervisor's children included, and what its children that exited used)."""
        user = system = 0
        for pid in [self.process.pid, *_descendants(self.process.pid)]:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()  # a name may hold spaces
            except FileNotFoundError:
                continue  # exited meanwhile
            user += int(fields[11]) + (int(fields[13]) if pid == self.process.pid else 0)
            system += int(fields[12]) + (int(fields[14]) if pid == self.process.pid else 0)
        ticks = os.sysconf("SC_CLK_TCK")
        return user / ticks, system / ticks

    def file_descriptors(self):
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def rss_kib(self):
        return int(self._status("VmRSS").split()[0])

    def _status(self, field):
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return line.split(":", 1)[1].strip()
        raise KeyError(field)


def _descendants(pid):
    """The pids of a process's children, and theirs."""
    children = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listed:
            children = [int(child) for child in listed.read().split()]
    except FileNotFoundError:
        return []
    return children + [grandchild for child in children for grandchild in _descendants(child)]
