"""How many plugin server processes a node runs, and which one this is: read before anything
else is imported (standard library only), since the supervisor must not load gevent."""

from __future__ import annotations

import logging
import os

from customer_auth.core.terms import LOGGER_NAME
from customer_auth.kong.ids import MAX_PROCESSES

PROCESSES = "CUSTOMER_VERIFICATION_PROCESSES"
CHILD_SLOT = "CUSTOMER_VERIFICATION_CHILD_SLOT"  # set for a supervisor's child: its slot
CHILD_CHANNEL = "CUSTOMER_VERIFICATION_CHILD_CHANNEL"  # and the descriptor of its channel
METRICS_MESSAGE = b"metrics "  # a child's message: the port its own metrics are served on

log = logging.getLogger(LOGGER_NAME)


def processes_wanted() -> int:
    """CUSTOMER_VERIFICATION_PROCESSES: a number of processes, or ``auto`` for one per core (as
    nginx's worker_processes); unset, 1: a single process, no supervisor."""
    text = os.environ.get(PROCESSES, "").strip().lower()
    if not text:
        return 1
    wanted = (os.cpu_count() or 1) if text == "auto" else int(text) if text.isdigit() else 0
    if not 1 <= wanted <= MAX_PROCESSES:
        log.error("%s must be auto or 1 to %d; running one process", PROCESSES, MAX_PROCESSES)
        return 1
    return wanted


def child_slot() -> int | None:
    """This process's slot when the supervisor started it, else None."""
    slot = os.environ.get(CHILD_SLOT)
    return int(slot) if slot is not None else None


def child_channel() -> int | None:
    """The descriptor of this child's channel to the supervisor, else None."""
    channel = os.environ.get(CHILD_CHANNEL)
    return int(channel) if channel is not None else None
