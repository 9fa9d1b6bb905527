"""The plugin server's side of Kong's MessagePack-RPC, written for this protocol (the lean
transport).

Kong calls ``plugin.HandleEvent`` for each request, then one ``plugin.Step`` (or ``StepError``,
``StepMultiMap``, ``StepCredential``, ...) per PDK call the handler makes, each on a connection it
takes from its keepalive pool: a Step may arrive on another connection than its HandleEvent, so
an event is found by its id, never by its connection. kong-pdk 0.36 serves this through gevent
Channels, a greenlet spawned per event, per-message regexes and debug strings, and an object per
attribute access of ``kong``; here the connection and the handler switch to each other directly,
and ``kong`` is one shared tree of callables. The plugin code is the same: the same ``Plugin``,
the same values, ``PDKException`` as with ``--no-lua-style`` (or ``(value, err)`` without it).

Instance bookkeeping (StartInstance, InstanceStatus, CloseInstance, GetStatus) and ``--dump``
stay kong-pdk's own code, and every message this module does not handle itself, or that is
malformed, is answered by kong-pdk's methods: the answers are kong-pdk's. Where kong-pdk never
answers, this answers at once: a handler that raises gets an error answer (kong-pdk leaves Kong
waiting for its socket timeout), and a PDK call after ``kong.response.exit`` raises at once
(kong-pdk blocks it for ever). A handler Kong stops waiting for, and an event Kong never finishes,
are ended by a sweep, so nothing outlives them.

It is started by customer_auth/kong/server.py, on the socket or on a supervisor's channel.
"""

from __future__ import annotations

import _socket
import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent
import gevent.socket
import msgpack
from greenlet import getcurrent
from kong_pdk import listener as pdk_listener
from kong_pdk import module as pdk_module
from kong_pdk.exception import PDKException, PluginServerException

from customer_auth import metrics
from customer_auth.core.terms import LOGGER_NAME
from customer_auth.errors import MalformedMessage
from customer_auth.kong.events import RET, TERMINAL_METHODS, TIMED_OUT, Event, Namespace
from customer_auth.kong.ids import Ids, expire_unused
from customer_auth.kong.processes import child_slot

log = logging.getLogger(LOGGER_NAME)

STEP_METHODS = frozenset(
    "plugin." + name
    for name in (
        "Step",
        "StepError",
        "StepMultiMap",
        "StepService",
        "StepConsumer",
        "StepRoute",
        "StepPlugin",
        "StepCredential",
        "StepMemoryStats",
    )
)

# nginx's default lua_socket_read_timeout: how long Kong waits for an answer before it gives up.
HANDLER_TIMEOUT = 60.0
# How long an event may wait for Kong's next Step. A PDK call Kong runs may take long (a slow
# client's body), so this is generous; past it Kong has given the request up.
STEP_TIMEOUT = 600.0
SWEEP_INTERVAL = 1.0
INSTANCE_SWEEP_INTERVAL = 60.0
READ_SIZE = 65536
# The largest message Kong may send: a body the plugin asked for (at most max_body_size's upper
# bound, schema.py) and the request's headers. A connection never buffers more: past it, it ends.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024 + 1024 * 1024
# After an accept error (out of file descriptors, memory), the pause before accepting again,
# doubled up to the longest while the error lasts.
ACCEPT_BACKOFF = (0.01, 1.0)
ACCEPT_WARNING_INTERVAL = 60.0
# The phases kong-pdk serves: an event names one the plugin defines, never another attribute.
PHASES = frozenset(pdk_module.phases)


class LeanTransport:
    """Serves Kong's connections on one unix socket for a kong-pdk ``PluginServer``."""

    handler_timeout = HANDLER_TIMEOUT
    step_timeout = STEP_TIMEOUT

    def __init__(self, plugin_server: Any) -> None:
        self.server = plugin_server  # kong-pdk's PluginServer
        self.lua_style = plugin_server.lua_style
        self.hub = gevent.get_hub()
        self.ids: Ids = getattr(plugin_server, "ids", None) or Ids(child_slot() or 0)
        self.kong = Namespace("kong")
        self.events: dict[int, Event] = {}
        self._packer = msgpack.Packer(unicode_errors="surrogateescape")
        # kong-pdk's method name -> its PluginServer method, converted once
        self._names: dict[str, Callable[..., Any]] = {}
        self._sweeper: Any = None
        self._instances_swept = time.monotonic()
        self.connections = 0
        metrics.KONG_CONNECTIONS.set_function(lambda: self.connections)
        metrics.EVENTS_OPEN.set_function(lambda: len(self.events))

    # -- the socket ---------------------------------------------------------------------------
    def serve_forever(self, path: str, backlog: int = 4096) -> None:
        if os.path.exists(path):
            os.remove(path)
        listener = gevent.socket.socket(gevent.socket.AF_UNIX, gevent.socket.SOCK_STREAM)
        listener.bind(path)
        # Kong's alone: only the user it runs as (which spawned this server) may connect. Set
        # before listen(), so that nobody connects in between.
        os.chmod(path, 0o600)
        listener.listen(backlog)
        self.server.logger.info("server (gevent, lean transport) started at path " + path)
        self.start_sweeping()
        self.accept_forever(listener)

    def serve_channel(self, channel_fd: int) -> None:
        """A supervisor's child: Kong's connections arrive as descriptors on the channel (the
        supervisor accepted them from the nginx workers this child serves); the child exits when
        the channel closes, the supervisor gone."""
        channel = socket.socket(fileno=channel_fd)
        channel.setblocking(False)
        readable = self.hub.loop.io(channel_fd, 1)
        self.server.logger.info("server (gevent, lean transport) serving the supervisor's channel")
        self.start_sweeping()
        while True:
            self.hub.wait(readable)
            try:
                message, descriptors, _flags, _address = socket.recv_fds(channel, 64, 64)
            except BlockingIOError:
                continue
            if not message and not descriptors:
                self.server.logger.info("the supervisor has gone, terminating...")
                sys.exit(0)
            for descriptor in descriptors:
                gevent.spawn(self.serve_connection, _socket.socket(fileno=descriptor))
            gevent.sleep(0)

    def accept_forever(self, listener: gevent.socket.socket) -> None:
        """Accepts one connection at a time, letting the handlers run in between (so that it
        never accepts faster than it serves), and survives what accept() may raise: out of
        file descriptors or memory, backed off while it lasts, logged once a minute."""
        backoff: float | None = None
        warned = -ACCEPT_WARNING_INTERVAL
        while True:
            try:
                connection, _address = listener.accept()
            except OSError as error:
                metrics.ACCEPT_ERRORS.inc()
                if time.monotonic() - warned >= ACCEPT_WARNING_INTERVAL:
                    warned = time.monotonic()
                    log.warning(
                        "the plugin server cannot accept Kong's connections (%s); it retries and "
                        "Kong waits meanwhile (raise the open files limit if this lasts)",
                        error.strerror or error,
                    )
                backoff = min(2 * backoff, ACCEPT_BACKOFF[1]) if backoff else ACCEPT_BACKOFF[0]
                gevent.sleep(backoff)
                continue
            backoff = None
            gevent.spawn(self.serve_connection, _socket.socket(fileno=connection.detach()))
            gevent.sleep(0)

    def serve_connection(self, connection: _socket.socket) -> None:
        """Reads a connection's messages and answers each, until Kong closes it. Kong sends one
        call at a time and waits for the answer, so the socket is read only once readable."""
        connection.setblocking(False)
        unpacker = msgpack.Unpacker(
            strict_map_key=False, unicode_errors="surrogateescape", max_buffer_size=MAX_MESSAGE_SIZE
        )
        readable = self.hub.loop.io(connection.fileno(), 1)
        self.connections += 1
        try:
            while True:
                self.hub.wait(readable)
                try:
                    data = connection.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                if not data:
                    return
                unpacker.feed(data)  # BufferFull past MAX_MESSAGE_SIZE
                # Another shape than [0, msgid, method, args] ends the connection, as in kong-pdk.
                for _kind, msgid, method, args in unpacker:
                    self._send(connection, self.answer(msgid, method, args))
        except OSError:
            pass  # Kong went away mid-answer; its events wait for another connection or the sweep
        except msgpack.BufferFull:
            log.warning(
                "ending a connection to the plugin server that sent a message over %d bytes",
                MAX_MESSAGE_SIZE,
            )
        except (MalformedMessage, ValueError, TypeError) as error:  # not [0, msgid, method, args]
            log.warning(
                "ending a connection to the plugin server that sent a malformed message (%s)",
                type(error).__name__,
            )
        finally:
            self.connections -= 1
            readable.close()
            connection.close()

    def _send(self, connection: _socket.socket, data: bytes) -> None:
        try:
            sent = connection.send(data)
        except BlockingIOError:
            sent = 0
        # A large answer, or a Kong worker that reads slowly: the rest as it drains.
        if sent < len(data):
            self._send_rest(connection, memoryview(data)[sent:])

    def _send_rest(self, connection: _socket.socket, rest: memoryview) -> None:
        writable = self.hub.loop.io(connection.fileno(), 2)
        try:
            while rest:
                self.hub.wait(writable)
                try:
                    rest = rest[connection.send(rest) :]
                except BlockingIOError:
                    pass
        finally:
            writable.close()

    # -- one message ----------------------------------------------------------------------------
    def answer(self, msgid: Any, method: Any, args: Any) -> bytes:
        if type(method) is not str or method.count(".") != 1:
            raise MalformedMessage(method)  # kong-pdk's listener ends the connection on it too
        try:
            if method == "plugin.HandleEvent":
                result = self.handle_event(args)
            elif method in STEP_METHODS:
                result = self.step(args, method == "plugin.StepError")
            else:
                result = self.pdk_method(method, args)
        except (PluginServerException, PDKException) as error:
            return self._pack([1, msgid, str(error), None])
        except Exception as error:
            log.error(
                "the plugin server's %s failed: %s",
                method,
                "".join(traceback.format_exception_only(type(error), error)).strip(),
            )
            return self._pack([1, msgid, str(error), None])
        return self._pack([1, msgid, None, result])

    def _pack(self, message: list[Any]) -> bytes:
        packed: bytes = self._packer.pack(message)
        return packed

    def pdk_method(self, method: str, args: Any) -> Any:
        """What kong-pdk's listener does with a message: its PluginServer method of that name
        (``plugin.StartInstance`` -> ``start_instance``), called with the arguments as they came."""
        function = self._names.get(method)
        if function is None:
            ns, command = method.split(".")
            if ns != "plugin":
                raise PluginServerException("RPC for %s is not supported" % ns)
            # AttributeError: kong-pdk's answer
            function = getattr(self.server, _snake_case(command))
            self._names[method] = function
        return function(*args)

    def handle_event(self, args: Any) -> Any:
        event: Any = args[0] if type(args) is list and len(args) == 1 else None
        if type(event) is dict and "EventName" in event and event["EventName"] not in PHASES:
            # kong-pdk would look any attribute up by that name, and call it
            raise PluginServerException("no such phase: %r" % (event["EventName"],))
        try:
            instance = self.server.instances[event["InstanceId"]]
            phase = getattr(instance.cls, event["EventName"])
        except Exception:
            # kong-pdk's error for it: no instance, no phase, bad shape
            return self.server.handle_event(*args)
        instance.reset_expire_ts()
        event_id = self.ids.next()
        event = Event(event_id, phase, self)
        self.events[event_id] = event
        return {
            "Data": self._settle(event, self._wait_for(event, event.switch)),
            "EventId": event_id,
        }

    def step(self, args: Any, is_error: bool) -> Any:
        data: Any = args[0] if type(args) is list and len(args) == 1 else None
        try:
            event = self.events[data["EventId"]]
        except Exception:
            # kong-pdk's error: "event id ... not found", or bad shape
            return self.server.step(*args)
        if event.waiter is not None:
            raise PluginServerException("event id %s is already being stepped" % event.id)
        value = data.get("Data")
        if event.ready is not None:  # the handler went on after an interruption: its output answers
            output, event.ready = event.ready, None
        elif event.parked:  # Kong's result, for the call the handler waits at
            output = self._wait_for(
                event, event.switch, (None, value) if is_error else (value, None)
            )
        elif not event.dead:  # running again, its call interrupted: the result is dropped
            output = self._wait_for(event, self.hub.switch)
        else:
            raise PluginServerException("event id %s has ended" % event.id)
        return {"Data": self._settle(event, output), "EventId": event.id}

    def _wait_for(self, event: Event, switch: Callable[..., Any], *value: Any) -> Any:
        """The handler's next output, this connection waiting as the event's waiter meanwhile
        (Kong's wait for the answer starts now: the handler timeout counts from here)."""
        event.since = time.monotonic()
        event.wait_on(getcurrent())
        try:
            return switch(*value)
        finally:
            event.wait_on(None)

    def _settle(self, event: Event, output: Any) -> Any:
        """The answer's Data for a handler's output; the event ends when Kong will send no more."""
        if type(output) is dict:
            event.since = time.monotonic()
            if output["Method"] not in TERMINAL_METHODS:
                return output
            self._end(event)
            self.hub.loop.run_callback(self._go_on_after_exit, event)
            return output
        self._end(event)
        if output is RET:
            return RET
        if output is TIMED_OUT:
            metrics.EVENTS_ENDED_BY_REASON["handler_timeout"].inc()
            log.warning(
                "a plugin handler gave Kong no answer within %.0f s; it was ended",
                self.handler_timeout,
            )
            self.hub.loop.run_callback(self._kill, event)
            raise PluginServerException(
                "the plugin handler did not answer within %.0f s" % self.handler_timeout
            )
        metrics.EVENTS_ENDED_BY_REASON["handler_raised"].inc()
        error = output.error
        log.error(
            "a plugin handler raised %s; Kong was answered with the error at once",
            type(error).__name__,
            exc_info=error,
        )
        raise PluginServerException(str(error) or type(error).__name__)

    def _end(self, event: Event) -> None:
        event.ended = True
        self.events.pop(event.id, None)

    @staticmethod
    def _go_on_after_exit(event: Event) -> None:
        """kong.response.exit returns at once: the handler goes on (in the hub's turn, so no
        connection waits for it) and ends; a PDK call it makes raises at once."""
        if event.parked and not event.dead:
            event.switch(None)

    @staticmethod
    def _kill(event: Event) -> None:
        if not event.dead:
            event.throw(gevent.GreenletExit)

    # -- the sweep ------------------------------------------------------------------------------
    def start_sweeping(self, interval: float = SWEEP_INTERVAL) -> None:
        self._sweeper = self.hub.loop.timer(interval, interval)
        self._sweeper.start(self.sweep)

    def sweep(self) -> None:
        """Runs in the hub: ends events whose handler Kong has waited for too long (Kong gets an
        error answer, if it still listens) and events Kong stopped stepping; now and then, drops
        instances nothing uses any more."""
        if os.getppid() == 1:  # Kong (or the supervisor) has gone: kong-pdk's watchdog, on a timer
            self.server.logger.info("Kong exits, terminating...")
            self.hub.loop.run_callback(sys.exit)
        now = time.monotonic()
        if now - self._instances_swept > INSTANCE_SWEEP_INTERVAL:
            self._instances_swept = now
            expire_unused(self.server)
        for event in list(self.events.values()):
            waiter = event.waiter
            if waiter is not None and now - event.since > self.handler_timeout:
                event.wait_on(None)
                waiter.switch(TIMED_OUT)
            elif waiter is None and now - event.since > self.step_timeout:
                metrics.EVENTS_ENDED_BY_REASON["never_finished"].inc()
                log.warning(
                    "Kong never finished a plugin event in %.0f s; it was ended", self.step_timeout
                )
                self._end(event)
                self._kill(event)


def _snake_case(command: str) -> str:
    """kong-pdk's conversion of an RPC command to its method name (with its own pattern):
    StartInstance -> start_instance."""
    rest: str = pdk_listener.cmdre.sub(
        lambda m: "%s_%s" % (m.group(1), m.group(2).lower()), command[1:]
    )
    return command[0].lower() + rest
