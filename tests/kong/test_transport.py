"""The lean transport (customer_auth/kong/transport.py) against stock kong-pdk, message by message,
and what it does where kong-pdk never answers: raw MessagePack-RPC on the unix socket, as Kong's
Rpc:call sends it (a connection per call, Steps on other connections, events interleaved)."""

import itertools
import json
import os
import pathlib
import random
import re
import resource
import socket
import time

import msgpack
import pytest
from conftest import SERVER_MODES, ServerMode, short_directory

from customer_auth.kong import transport
from devtools.kong_standin import PluginServer

TINY = pathlib.Path(__file__).with_name("tiny_plugin.py")
CONFIG = json.dumps({"greeting": "hello", "__seq__": 1, "__plugin_id": "plugin"})


class Wire:
    """Kong's side of the socket, message by message: ``call`` sends one request on the given
    connection (by number; each is opened on first use) and returns the raw answer, or None when
    none comes within ``timeout``.

    A server numbers instances and events with ids of its own (customer_auth/kong/ids.py): the
    tests write and read them as numbers in order of appearance (instances from 0, events from
    1), so that two servers' conversations compare (an answer with an id is packed again with
    the test's number). A number never seen stands for an id no server gives."""

    UNSEEN = 10**15  # plus a test's number: an id no server gives

    def __init__(self, path, timeout=3.0):
        self.path, self.timeout = path, timeout
        self.connections = {}
        self.msgids = itertools.count(1)
        self.ids = {"Id": {}, "EventId": {}}  # the test's number -> the server's id, by kind
        self.numbers = {}  # the server's id -> the test's number

    def connection(self, number):
        if number not in self.connections:
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.settimeout(self.timeout)
            connection.connect(self.path)
            self.connections[number] = (
                connection,
                msgpack.Unpacker(raw=False, unicode_errors="surrogateescape"),
            )
        return self.connections[number]

    def call(self, method, arg, on=0):
        raw = self._call(method, self._absolute(method, arg), on)
        if raw is None:
            return None
        answer = decoded(raw)
        result = answer[3] if isinstance(answer[3], dict) else {}
        for kind, first in (("Id", 0), ("EventId", 1)):
            if method in ("plugin.StartInstance", "plugin.HandleEvent") and kind in result:
                given = result[kind]
                if given not in self.numbers:
                    self.numbers[given] = first + len(self.ids[kind])
                    self.ids[kind][self.numbers[given]] = given
        relative = self._relative(answer)
        return raw if relative == answer else msgpack.packb(relative)

    def _server_id(self, kind, number):
        return self.ids[kind].get(number, self.UNSEEN + number)

    def _absolute(self, method, arg):
        if type(arg) is int and method in ("plugin.InstanceStatus", "plugin.CloseInstance"):
            return self._server_id("Id", arg)
        if isinstance(arg, dict):
            kinds = {"InstanceId": "Id", "EventId": "EventId"}
            return {
                key: self._server_id(kinds[key], value)
                if key in kinds and type(value) is int
                else value
                for key, value in arg.items()
            }
        return arg

    def _number(self, given):
        if given in self.numbers:
            return self.numbers[given]
        return given - self.UNSEEN if given >= self.UNSEEN else given

    def _relative(self, value):
        if isinstance(value, dict):
            return {
                key: self._number(item)
                if key in ("Id", "EventId") and type(item) is int
                else self._relative(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self._relative(item) for item in value]
        if isinstance(value, str):
            return re.sub(r"\d{7,}", lambda found: str(self._number(int(found.group()))), value)
        return value

    def _call(self, method, arg, on):
        connection, unpacker = self.connection(on)
        msgid = next(self.msgids)
        connection.sendall(msgpack.packb([0, msgid, method, [arg]], use_bin_type=False))
        raw = b""
        while True:
            try:
                data = connection.recv(65536)
            except TimeoutError:
                return None
            if not data:
                raise ConnectionError("the server closed the connection")
            raw += data
            unpacker.feed(data)
            for message in unpacker:
                assert message[:2] == [1, msgid], message
                return raw

    def drop(self, number):
        self.connections.pop(number)[0].close()

    def close(self):
        for number in list(self.connections):
            self.drop(number)


def decoded(raw):
    return msgpack.unpackb(raw, raw=False, unicode_errors="surrogateescape", strict_map_key=False)


def masked(value):
    """An answer with what differs from run to run (times, the process id) masked."""
    if isinstance(value, float):
        return "<time>"
    if isinstance(value, dict):
        return {key: "<pid>" if key == "Pid" else masked(item) for key, item in value.items()}
    if isinstance(value, list):
        return [masked(item) for item in value]
    return value


@pytest.fixture
def served(request):
    """Starts the tiny plugin's server in a mode (and environment) and yields a Wire to it."""
    started = []

    def serve(mode, **env):
        mode = SERVER_MODES[mode] if isinstance(mode, str) else mode
        server = PluginServer(
            TINY, short_directory(), "tiny", mode.flags, env={**mode.env, **env}
        ).start()
        wire = Wire(server.socket_path)
        started.append((server, wire))
        return server, wire

    yield serve
    for server, wire in started:
        wire.close()
        server.stop()


def headers_of(action, **more):
    return {
        "x-action": [action],
        **{name.replace("_", "-"): [value] for name, value in more.items()},
    }


# Every kind of message Kong sends, and the malformed ones it never sends, in one conversation:
# (method, argument, connection). Ids are relative to each server's first (Wire).
CONVERSATION = [
    ("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG}, 0),
    ("plugin.StartInstance", {"Name": "other", "Config": CONFIG}, 1),
    ("plugin.InstanceStatus", 0, 2),
    ("plugin.InstanceStatus", 7, 0),
    ("plugin.GetStatus", None, 1),
    ("plugin.HandleEvent", {"InstanceId": 7, "EventName": "access"}, 0),
    # a phase the plugin lacks (event 0)
    (
        "plugin.HandleEvent",
        {"InstanceId": 0, "EventName": "rewrite"},
        1,
    ),
    ("plugin.HandleEvent", {"EventName": "access"}, 1),
    ("plugin.HandleEvent", "access", 2),
    # Event 1: a verified request, each call on another connection than the last.
    ("plugin.HandleEvent", {"InstanceId": 0, "EventName": "access"}, 0),
    ("plugin.StepMultiMap", {"EventId": 1, "Data": {"x-multi": ["a", "b"]}}, 1),
    ("plugin.StepCredential", {"EventId": 1, "Data": {"id": "tiny"}}, 2),
    # Events 2 and 3 interleaved with event 1: a StepError, and one that ends in a PDK error.
    ("plugin.HandleEvent", {"InstanceId": 0, "EventName": "access"}, 3),
    ("plugin.HandleEvent", {"InstanceId": 0, "EventName": "access"}, 4),
    ("plugin.Step", {"EventId": 1}, 0),  # no Data: None
    ("plugin.StepMultiMap", {"EventId": 3, "Data": headers_of("step-error")}, 3),
    ("plugin.StepMultiMap", {"EventId": 2, "Data": headers_of("pass")}, 1),
    ("plugin.StepError", {"EventId": 3, "Data": 'invalid header value for "x-bad": got table'}, 4),
    ("plugin.Step", {"EventId": 1, "Data": None}, 2),
    ("plugin.Step", {"EventId": 3, "Data": None}, 1),
    ("plugin.StepCredential", {"EventId": 2, "Data": {"id": "tiny"}}, 0),
    ("plugin.Step", {"EventId": 3, "Data": None}, 0),  # event 3 has ended
    # Event 4: kong.response.exit, which Kong never answers.
    ("plugin.HandleEvent", {"InstanceId": 0, "EventName": "access"}, 2),
    ("plugin.StepMultiMap", {"EventId": 4, "Data": headers_of("exit")}, 2),
    # Steps Kong never sends.
    ("plugin.Step", {"EventId": 99, "Data": None}, 1),
    ("plugin.StepConsumer", {"EventId": 99}, 1),
    ("plugin.Step", {"Data": None}, 3),
    ("plugin.Step", {"EventId": [1], "Data": None}, 3),
    ("plugin.Step", "nothing", 3),
    ("plugin.StepMemoryStats", {"EventId": 98}, 4),
    # Methods kong-pdk does not have, or not in this namespace.
    ("plugin.SetPluginDir", "/nonexistent", 0),
    ("plugin.NoSuchThing", {}, 0),
    ("rpc.Thing", {}, 1),
    ("plugin.CloseInstance", 0, 1),
    ("plugin.CloseInstance", 0, 2),
    ("plugin.HandleEvent", {"InstanceId": 0, "EventName": "access"}, 3),
]


def converse(wire):
    return [wire.call(method, arg, on) for method, arg, on in CONVERSATION]


def test_every_message_is_answered_as_kong_pdk_answers_it(served):
    _, stock = served("kong-pdk")
    _, lean = served("lean")
    expected, answered = converse(stock), converse(lean)
    for (method, arg, _), want, got in zip(CONVERSATION, expected, answered, strict=True):
        assert want is not None, f"kong-pdk gave no answer to {method} {arg!r}"
        assert masked(decoded(got)) == masked(decoded(want)), f"{method} {arg!r}"
        if masked(decoded(want)) == decoded(want):  # nothing masked: the very bytes
            assert got == want, f"{method} {arg!r}"
    # what makes Kong start an instance again
    assert decoded(answered[-1])[2] == "no plugin instance #0"


def test_a_malformed_message_ends_the_connection_as_in_kong_pdk(served):
    _, stock = served("kong-pdk")
    _, lean = served("lean")
    for wire in (stock, lean):
        with pytest.raises(ConnectionError):
            wire.call("HandleEvent", {}, 0)  # no namespace: kong-pdk's listener ends the connection
        assert decoded(wire.call("plugin.InstanceStatus", 0, 1))[2] == "no plugin instance #0"


def start_event(wire, action, on=0, **more):
    """HandleEvent for a new request and the step with its headers: the handler's next call."""
    answer = decoded(wire.call("plugin.HandleEvent", {"InstanceId": 0, "EventName": "access"}, on))[
        3
    ]
    assert answer["Data"]["Method"] == "kong.request.get_headers"
    event_id = answer["EventId"]
    return event_id, decoded(
        wire.call(
            "plugin.StepMultiMap", {"EventId": event_id, "Data": headers_of(action, **more)}, on
        )
    )


def stats(wire, on=0):
    _, answer = start_event(wire, "stats", on)
    call = answer[3]["Data"]
    assert call["Method"] == "kong.response.exit", answer
    return call["Args"][1]


def started(served, **env):
    """The lean transport with an instance, and ten connections open (each has its greenlet)."""
    _, wire = served("lean", **env)
    for number in range(10):
        wire.call(
            "plugin.StartInstance" if number == 0 else "plugin.InstanceStatus",
            {"Name": "tiny", "Config": CONFIG} if number == 0 else 0,
            number,
        )
    return wire


def test_a_handler_that_raises_is_answered_at_once(served):
    wire = started(served)
    began = time.monotonic()
    _, answer = start_event(wire, "raise")
    assert answer[2] == "boom" and time.monotonic() - began < 1  # kong-pdk: no answer, ever


def test_a_pdk_call_after_exit_raises_at_once(served):
    wire = started(served)
    _, answer = start_event(wire, "call-after-exit")
    assert answer[3]["Data"] == {"Method": "kong.response.exit", "Args": [403, {"message": "no"}]}
    time.sleep(0.1)
    # kong-pdk: blocked for ever
    assert "the request has already ended" in stats(wire)["after_exit"][0]


# (the PDK calls that time out, the handler's pause before its exit, when "Kong" answers the first)
TIMEOUTS = {
    "exit ready": ("get_id", "0", 0.4),
    "handler still running": ("get_id", "0.3", 0.15),
    "second call never sent": ("get_id,get_hostname", "0.3", 0.3),
}


@pytest.mark.parametrize("case", list(TIMEOUTS))
def test_a_gevent_timeout_during_a_pdk_call_gets_the_handlers_next_call_answered(served, case):
    calls, pause, step_after = TIMEOUTS[case]
    wire = started(served)
    baseline = stats(wire)["greenlets"]
    event_id, answer = start_event(wire, "timeout", x_calls=calls, x_seconds="0.1", x_after=pause)
    assert answer[3]["Data"]["Method"] == "kong.node.get_id"
    time.sleep(step_after)  # the Timeout fires while "Kong" runs kong.node.get_id
    late = decoded(wire.call("plugin.Step", {"EventId": event_id, "Data": "node-id"}, 1))
    assert late[3]["Data"] == {
        "Method": "kong.response.exit",
        "Args": [504, {"message": "timed out"}],
    }
    assert stats(wire)["greenlets"] == baseline


def test_a_handler_that_never_answers_is_ended_and_kong_told(served):
    wire = started(served, TINY_HANDLER_TIMEOUT="1")
    baseline = stats(wire)["greenlets"]
    began = time.monotonic()
    _, answer = start_event(wire, "hang")
    assert "did not answer within 1 s" in answer[2] and time.monotonic() - began < 4
    assert stats(wire, on=1)["greenlets"] == baseline


def test_an_event_kong_never_finishes_is_swept(served):
    wire = started(served, TINY_STEP_TIMEOUT="1")
    baseline = stats(wire)["greenlets"]
    # each waits for authenticate's answer
    abandoned = [start_event(wire, "pass", on=n)[0] for n in range(5)]
    for n in range(5):
        wire.drop(n)  # and Kong drops the connection, as when its worker dies
    time.sleep(2.5)
    assert stats(wire, on=9)["greenlets"] == baseline - 5  # and the five connections' own
    assert (
        decoded(wire.call("plugin.Step", {"EventId": abandoned[0]}, 9))[2]
        == f"event id {abandoned[0]} not found"
    )


def test_an_interrupted_event_whose_next_step_never_comes_is_swept(served):
    wire = started(served, TINY_STEP_TIMEOUT="1")
    baseline = stats(wire)["greenlets"]
    _, answer = start_event(wire, "timeout", x_calls="get_id", x_seconds="0.1")
    assert answer[3]["Data"]["Method"] == "kong.node.get_id"  # its answer never comes
    time.sleep(2.5)  # the Timeout fired, the exit waits as the answer to a Step Kong never sends
    assert stats(wire)["greenlets"] == baseline


def test_an_event_goes_on_on_another_connection_after_kong_drops_one(served):
    wire = started(served)
    event_id, answer = start_event(wire, "pass", on=0)
    wire.drop(0)
    step = decoded(
        wire.call("plugin.StepCredential", {"EventId": event_id, "Data": {"id": "tiny"}}, 1)
    )
    assert step[3]["Data"]["Method"] == "kong.service.request.set_header"


def test_an_answer_larger_than_the_socket_buffer_arrives_whole(served):
    wire = started(served)
    _, answer = start_event(wire, "big", x_size=str(4 << 20))
    assert answer[3]["Data"] == {
        "Method": "kong.service.request.set_header",
        "Args": ["x-big", "b" * (4 << 20)],
    }


def test_ten_thousand_interleaved_events_leave_greenlets_descriptors_and_memory_flat(served):
    wire = started(served)
    mix = random.Random(9421)

    def batch(size=100, connections=20):
        """``size`` events at once, each message on a random connection, in random order."""
        events = {}
        for _ in range(size):
            event_id, answer = start_event(
                wire, mix.choice(["pass", "exit", "step-error"]), on=mix.randrange(connections)
            )
            events[event_id] = answer[3]["Data"]
        while events:
            event_id = mix.choice(list(events))
            call = events.pop(event_id)
            if call == "ret" or call["Method"] == "kong.response.exit":
                continue
            method = (
                "plugin.StepError"
                if call["Method"] == "kong.service.request.set_header"
                and isinstance(call["Args"][1], dict)
                else "plugin.Step"
            )
            data = "invalid header value" if method == "plugin.StepError" else None
            events[event_id] = decoded(
                wire.call(method, {"EventId": event_id, "Data": data}, mix.randrange(connections))
            )[3]["Data"]

    for _ in range(5):
        batch()  # warm up
    before = stats(wire)
    for _ in range(100):
        batch()
    after = stats(wire)
    assert after["greenlets"] == before["greenlets"]
    assert after["fds"] == before["fds"]
    assert after["rss_kib"] - before["rss_kib"] < 5 * 1024


def test_without_gevent_or_when_asked_the_server_is_stock_kong_pdk(served):
    for mode in (ServerMode(["--no-lua-style"]), SERVER_MODES["kong-pdk"]):
        server, wire = served(mode)
        wire.timeout = 1
        wire.call("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG})
        wire.call("plugin.HandleEvent", {"InstanceId": 0, "EventName": "access"})
        # kong-pdk's
        assert wire.call("plugin.StepMultiMap", {"EventId": 1, "Data": headers_of("raise")}) is None
        assert "lean transport" not in server.log()
    server, _ = served("lean")
    assert "lean transport" in server.log()


def test_an_unknown_transport_setting_is_said_and_the_lean_one_runs(served):
    server, wire = served(SERVER_MODES["lean"], CUSTOMER_VERIFICATION_TRANSPORT="fast")
    wire.call("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG})
    _, answer = start_event(wire, "raise")
    assert answer[2] == "boom"  # answered at once: the lean transport
    assert (
        "CUSTOMER_VERIFICATION_TRANSPORT must be one of lean, kong-pdk; using lean" in server.log()
    )


# -- what only Kong may send, and how much ------------------------------------------------------


def test_the_socket_admits_only_the_user_the_server_runs_as(served):
    server, _ = served("lean")
    assert os.stat(server.socket_path).st_mode & 0o777 == 0o600


def test_an_event_names_a_phase_never_another_attribute_of_the_plugin(served):
    _, wire = served("lean")
    wire.call("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG})
    for name in ("__init__", "config", "__class__"):
        answer = decoded(wire.call("plugin.HandleEvent", {"InstanceId": 0, "EventName": name}))
        assert answer[2] == f"no such phase: {name!r}" and answer[3] is None


def test_a_message_larger_than_kong_could_send_ends_its_connection_within_the_bound(served):
    server, wire = served("lean")
    wire.call("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG})
    connection, _ = wire.connection(1)
    # [0, 1, "plugin.Step", [<a string of 1 GiB>]]
    connection.sendall(b"\x94\x00\x01" + msgpack.packb("plugin.Step") + b"\x91\xdb\x40\x00\x00\x00")
    sent, chunk = 0, b"x" * (1024 * 1024)
    with pytest.raises(OSError):  # reset or broken pipe: the server ended it
        while sent < 2 * transport.MAX_MESSAGE_SIZE:
            connection.sendall(chunk)
            sent += len(chunk)
    assert sent <= transport.MAX_MESSAGE_SIZE + 8 * len(chunk)  # what the socket buffers
    wire.connections.pop(1)
    assert decoded(wire.call("plugin.InstanceStatus", 0, 2))[3]["Name"] == "tiny"  # still serving
    assert server.log().count(f"sent a message over {transport.MAX_MESSAGE_SIZE} bytes") == 1


def test_accept_errors_are_survived_logged_once_and_backed_off(served):
    server, wire = served("lean")
    wire.call("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG})
    used = server.file_descriptors()
    resource.prlimit(server.process.pid, resource.RLIMIT_NOFILE, (used + 20, used + 20))
    held = []
    for _ in range(200):  # past the limit: accept() fails with EMFILE meanwhile
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.connect(server.socket_path)
        held.append(connection)
    time.sleep(1)
    cpu = sum(server.cpu_times())
    time.sleep(1)
    assert sum(server.cpu_times()) - cpu < 0.2  # backed off, not spinning
    for connection in held:
        connection.close()
    wire.timeout = 10
    assert decoded(wire.call("plugin.InstanceStatus", 0, 3))[3]["Name"] == "tiny"
    log = server.log()
    assert log.count("cannot accept Kong's connections (Too many open files)") == 1, log


def test_a_config_an_instance_has_gets_that_instance_whichever_worker_asks(served):
    _, wire = served("lean")
    first = decoded(wire.call("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG}, 0))
    again = decoded(wire.call("plugin.StartInstance", {"Name": "tiny", "Config": CONFIG}, 1))
    changed = json.dumps({**json.loads(CONFIG), "__seq__": 2})
    other = decoded(wire.call("plugin.StartInstance", {"Name": "tiny", "Config": changed}, 2))
    assert first[3]["Id"] == again[3]["Id"] != other[3]["Id"]
