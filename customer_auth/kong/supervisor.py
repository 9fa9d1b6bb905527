"""The plugin server on every core: a supervisor that accepts Kong's connections and hands each
to the child process that serves the nginx worker that made it.

A request lives in one nginx worker, and each worker keeps its own pool of connections to the
socket, so routing each connection by the connecting worker's pid (``SO_PEERCRED``) keeps every
Step of an event with the process that holds the event, whichever of the worker's connections
it comes on. The descriptor is passed with SCM_RIGHTS (``socket.send_fds``) over a channel per
child; a child (customer_verification.py started again, with CHILD_SLOT and CHILD_CHANNEL set)
runs the lean transport on the descriptors it receives.

As gunicorn's arbiter: children in slots, a child that dies is replaced in its slot at once and
its workers' connections wait for it in the slot's queue, never go to a sibling; a child that is
slow to take its descriptors has them queued, so the supervisor never stalls. Children exit when
the supervisor goes (their channel closes). The supervisor imports neither the plugin nor gevent.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from customer_auth import metrics
from customer_auth.core.terms import LOGGER_NAME
from customer_auth.kong.processes import CHILD_CHANNEL, CHILD_SLOT, METRICS_MESSAGE

log = logging.getLogger(LOGGER_NAME)

POOL_SIZE = "CUSTOMER_VERIFICATION_POOL_SIZE"
METRICS_PORT = "CUSTOMER_VERIFICATION_METRICS_PORT"
DEFAULT_POOL_SIZE = 4  # store/connection.py's
FORGET_INTERVAL = 10.0  # seconds between sweeps of nginx workers that have exited
PEERCRED = struct.Struct("3i")  # pid, uid, gid


class Slot:
    """One child's place: it is replaced there when it dies, and the connections of the nginx
    workers routed to the slot wait in its queue meanwhile."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: subprocess.Popen[bytes] | None = None
        self.channel: socket.socket | None = None
        self.queue: collections.deque[socket.socket] = collections.deque()
        self.workers: set[int] = set()  # nginx worker pids routed here
        self.metrics_port: int | None = None
        self.restarts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    def __init__(self, path: str, command: Sequence[str], processes: int, backlog: int = 4096):
        self.path, self.command, self.backlog = path, list(command), backlog
        self.slots = [Slot(number) for number in range(processes)]
        self.routes: dict[int, Slot] = {}  # nginx worker pid -> its slot
        self.selector = selectors.DefaultSelector()
        self.stopping = False
        self._namespaces_warned = False
        self._wakeup_read, self._wakeup_write = socket.socketpair()
        self.pool_size = max(1, _env_int(POOL_SIZE, DEFAULT_POOL_SIZE) // processes)

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> None:
        listener = self._listen()
        self._wakeup_read.setblocking(False)
        self._wakeup_write.setblocking(False)
        signal.set_wakeup_fd(self._wakeup_write.fileno())
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(number, self._signalled)
        self.selector.register(listener, selectors.EVENT_READ, "accept")
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, "wakeup")
        for slot in self.slots:
            self._spawn(slot)
        registry = CollectorRegistry()
        registry.register(_Collected(self))
        metrics.serve_from_environment(self.health, registry)
        log.info("supervising %d plugin server processes on %s", len(self.slots), self.path)
        forgotten_at = time.monotonic()
        while not self.stopping:
            for key, events in self.selector.select(timeout=FORGET_INTERVAL):
                self._ready(key, events, listener)
            if time.monotonic() - forgotten_at >= FORGET_INTERVAL:
                self._forget_exited_workers()
                forgotten_at = time.monotonic()
        self._stop_children()

    def _listen(self) -> socket.socket:
        if os.path.exists(self.path):
            os.remove(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        os.chmod(self.path, 0o600)  # Kong's alone, as the lean transport's socket
        listener.listen(self.backlog)
        listener.setblocking(False)
        return listener

    def _ready(self, key: selectors.SelectorKey, events: int, listener: socket.socket) -> None:
        if key.data == "accept":
            self._accept(listener)
        elif key.data == "wakeup":
            while True:
                try:
                    if not self._wakeup_read.recv(512):
                        break
                except BlockingIOError:
                    break
            self._reap()
        else:
            slot: Slot = key.data
            if events & selectors.EVENT_READ:
                self._heard(slot)
            if events & selectors.EVENT_WRITE:
                self._flush(slot)

    def _signalled(self, number: int, _frame: object) -> None:
        if number in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True  # the loop wakes through the wakeup descriptor

    # -- connections ----------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        """Takes what is waiting, each to its worker's slot; a queue per slot, so that a child
        that is slow (or being replaced) never holds up the others."""
        for _ in range(64):
            try:
                connection, _address = listener.accept()
            except BlockingIOError:
                return
            except OSError as error:  # out of descriptors: back to the loop, which retries
                log.warning("the supervisor cannot accept Kong's connections (%s)", error)
                time.sleep(0.05)
                return
            slot = self._slot_for(_peer_pid(connection))
            slot.queue.append(connection)
            self._flush(slot)

    def _slot_for(self, pid: int) -> Slot:
        slot = self.routes.get(pid)
        if slot is None:
            if pid == 0 and not self._namespaces_warned:
                # The kernel names no pid across pid namespaces: all workers look alike.
                log.warning(
                    "Kong's workers are in another pid namespace than the plugin server: every "
                    "connection goes to one process (correct, not scaled); run both in one "
                    "namespace to use every core"
                )
                self._namespaces_warned = True
            slot = min(self.slots, key=lambda candidate: len(candidate.workers))
            slot.workers.add(pid)
            self.routes[pid] = slot
        return slot

    def _flush(self, slot: Slot) -> None:
        while slot.queue and slot.channel is not None:
            connection = slot.queue[0]
            try:
                socket.send_fds(slot.channel, [b"c"], [connection.fileno()])
            except BlockingIOError:
                self._watch(slot, write=True)
                return
            except OSError:
                return  # the child has gone: the queue waits for its replacement
            slot.queue.popleft()
            connection.close()
        self._watch(slot, write=False)

    def _watch(self, slot: Slot, write: bool) -> None:
        if slot.channel is not None:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
            self.selector.modify(slot.channel, events, slot)

    def _forget_exited_workers(self) -> None:
        """nginx workers come and go (a reload): their routes go with them."""
        for pid in list(self.routes):
            if pid and not _alive(pid):
                self.routes.pop(pid).workers.discard(pid)

    # -- children -------------------------------------------------------------------------------
    def _spawn(self, slot: Slot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {
            **os.environ,
            CHILD_SLOT: str(slot.number),
            CHILD_CHANNEL: str(theirs.fileno()),
            POOL_SIZE: str(self.pool_size),
        }
        env.pop(METRICS_PORT, None)  # the supervisor serves them, collected from the children
        slot.process = subprocess.Popen(self.command, env=env, pass_fds=(theirs.fileno(),))
        theirs.close()
        ours.setblocking(False)
        slot.channel, slot.metrics_port = ours, None
        self.selector.register(ours, selectors.EVENT_READ, slot)
        self._flush(slot)

    def _heard(self, slot: Slot) -> None:
        assert slot.channel is not None
        try:
            message = slot.channel.recv(64)
        except (BlockingIOError, ConnectionError):
            return
        if message.startswith(METRICS_MESSAGE):
            slot.metrics_port = int(message[len(METRICS_MESSAGE) :])
        elif not message:  # the child has gone; SIGCHLD brings the reaping
            self._close_channel(slot)

    def _close_channel(self, slot: Slot) -> None:
        if slot.channel is not None:
            self.selector.unregister(slot.channel)
            slot.channel.close()
            slot.channel = None

    def _reap(self) -> None:
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is not None and not self.stopping:
                log.warning(
                    "plugin server process %d (pid %d) exited with %s; replaced",
                    slot.number,
                    slot.process.pid,
                    slot.process.returncode,
                )
                slot.restarts += 1
                self._close_channel(slot)
                self._spawn(slot)

    def _stop_children(self) -> None:
        for slot in self.slots:
            if slot.running:
                assert slot.process is not None
                slot.process.terminate()
        deadline = time.monotonic() + 5
        for slot in self.slots:
            if slot.process is not None:
                try:
                    slot.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    slot.process.kill()

    # -- observed as one server -----------------------------------------------------------------
    def health(self) -> str:
        """ "up" when every child is up; "degraded" when some are not (or one is being replaced),
        or when the store fails but cached customers are served; "down" when none is up."""
        states = [_child_health(slot) for slot in self.slots]
        if all(state == "up" for state in states):
            return "up"
        return "degraded" if any(state in ("up", "degraded") for state in states) else "down"


class _Collected:
    """The children's metrics as one server's: each sample summed over the children (counters,
    gauges and histogram buckets all add up), and the supervisor's own."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        for slot in self.supervisor.slots:
            for family in _child_metrics(slot):
                known = families.setdefault(family.name, family)
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue  # each child's start time: no sum of them means anything
                    key = (known.name, sample.name, tuple(sorted(sample.labels.items())))
                    sums[key] = sums.get(key, 0.0) + sample.value
        for name, family in families.items():
            merged = Metric(family.name, family.documentation, family.type, family.unit)
            for (family_name, sample_name, labels), value in sums.items():
                if family_name == name:
                    merged.add_sample(sample_name, dict(labels), value)
            yield merged
        running = GaugeMetricFamily(
            "customer_verification_processes",
            "Plugin server processes under the supervisor, by state",
            labels=["state"],
        )
        up = sum(1 for slot in self.supervisor.slots if slot.running)
        running.add_metric(["running"], up)
        running.add_metric(["replacing"], len(self.supervisor.slots) - up)
        yield running
        restarts = CounterMetricFamily(
            "customer_verification_process_restarts",
            "Plugin server processes the supervisor replaced after they exited",
        )
        restarts.add_metric([], sum(slot.restarts for slot in self.supervisor.slots))
        yield restarts


def _child_metrics(slot: Slot) -> list[Metric]:
    if slot.metrics_port is None:
        return []
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{slot.metrics_port}/metrics", timeout=2
        ) as answer:
            return list(text_string_to_metric_families(answer.read().decode()))
    except OSError:
        return []  # being replaced: its share is missing from this scrape


def _child_health(slot: Slot) -> str:
    if slot.metrics_port is None or not slot.running:
        return "down"
    url = f"http://127.0.0.1:{slot.metrics_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return str(json.loads(answer.read()).get("status", "down"))
    except urllib.error.HTTPError:  # 503: down
        return "down"
    except (OSError, ValueError):
        return "down"


def _peer_pid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, PEERCRED.size)
    pid: int = PEERCRED.unpack(credentials)[0]
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    return int(text) if text.isdigit() else default


def supervise(name: str, processes: int) -> None:
    """Runs the supervisor on the socket kong-pdk's options name (``-p``, ``--socket-name``,
    ``--listen-queue-size``), for this very command: the children run it again as children."""
    import argparse

    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "-p", "--kong-prefix", "-kong-prefix", dest="prefix", default="/usr/local/kong/"
    )
    parser.add_argument("--socket-name", default=None)
    parser.add_argument("--listen-queue-size", type=int, default=4096)
    options, _ = parser.parse_known_args()
    path = os.path.join(options.prefix, options.socket_name or f"{name}.sock")
    Supervisor(path, [sys.executable, *sys.argv], processes, options.listen_queue_size).run()
