"""Instance and event ids that no other plugin server process ever gives.

Each Kong worker keeps the instance id ``plugin.StartInstance`` gave it, per plugin entity, and
forgets it only when told "no plugin instance". A server that numbered from 0 again after a
restart, or a sibling process that numbered like it, would serve a worker's id with another
route's instance, under that route's policy. So ids are numbered from the time since boot, in
steps of MAX_PROCESSES, each process (a child of the supervisor, or the only one) in its own
residue: a process never gives another's ids, nor a later process an earlier one's (no process
gives more than one id per TICK_NS, the clock never goes back, and Kong's workers do not outlive
a reboot).
"""

from __future__ import annotations

import time
from typing import Any

MAX_PROCESSES = 64  # processes on one socket at once: the supervisor's children
TICK_NS = 10_000  # 10 µs: ids stay below 2^53, where Kong's Lua numbers stop being exact,
# for 44 years of uptime


class Ids:
    """The ids of one process: ``next()`` gives a new one each time."""

    def __init__(self, slot: int = 0) -> None:
        if not 0 <= slot < MAX_PROCESSES:
            raise ValueError(f"slot must be below {MAX_PROCESSES}")
        start = time.clock_gettime_ns(time.CLOCK_BOOTTIME) // TICK_NS
        self._next = start * MAX_PROCESSES + slot

    def next(self) -> int:
        given, self._next = self._next, self._next + MAX_PROCESSES
        return given


INSTANCE_TTL = 3600.0  # seconds an instance may go unused before it is dropped


def number_instances(plugin_server: Any, ids: Ids) -> None:
    """kong-pdk's ``start_instance`` numbers instances 0, 1, 2... in every process: each is
    given an id of ``ids`` instead, under which Kong finds it from then on. Every nginx worker
    starts its own instance of each plugin entity (and new workers after each reload): a config
    that an instance already has (Kong's JSON, its ``__seq__`` included) gets that instance, so
    they are as many as the entities, not as the workers that came and went."""
    start_instance = plugin_server.start_instance
    by_config: dict[str, int] = {}

    def numbered(config: Any) -> Any:
        text = config.get("Config") if isinstance(config, dict) else None
        known = by_config.get(text) if isinstance(text, str) else None
        if known is not None and known in plugin_server.instances:
            return plugin_server.instance_status(known)
        status = start_instance(config)
        given = ids.next()
        plugin_server.instances[given] = plugin_server.instances.pop(status["Id"])
        status["Id"] = given
        if isinstance(text, str):
            by_config[text] = given
        return status

    plugin_server.start_instance = numbered


def expire_unused(plugin_server: Any, ttl: float = INSTANCE_TTL) -> int:
    """Drops the instances no event has used for ``ttl`` seconds (those of a config Kong changed,
    of nginx workers gone); a worker that still holds one's id gets "no plugin instance" and
    starts it again. Returns how many went."""
    expired = [iid for iid, instance in plugin_server.instances.items() if instance.is_expired(ttl)]
    for iid in expired:
        del plugin_server.instances[iid]
    return len(expired)
