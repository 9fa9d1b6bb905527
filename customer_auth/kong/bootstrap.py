"""How the plugin server process starts: as the supervisor of several processes when
CUSTOMER_VERIFICATION_PROCESSES asks for more than one (customer_auth/kong/supervisor.py, no
gevent), else gevent's patches first, then logging, the metrics listener and kong-pdk's
start_dedicated_server on the lean transport. Imports nothing at module level but the standard
library, so that ``supervise_or_patch`` comes before any other import."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # CUSTOMER_VERIFICATION_LOG_LEVEL


def supervise_or_patch(name: str) -> None:
    """Supervises the children (and never returns) when several processes are asked for on the
    lean transport; else patches the standard library for kong-pdk's gevent mode (``-g``), which
    does not itself: a lock held by one request or a database wait would stall every other
    request. It must come before any module that uses the standard library's I/O is imported."""
    import os

    from customer_auth.core.terms import LOGGER_NAME
    from customer_auth.kong.processes import PROCESSES, child_slot, processes_wanted

    gevent_mode = "-g" in sys.argv or "--gevent" in sys.argv
    if "--dump" not in sys.argv and child_slot() is None and processes_wanted() > 1:
        transport = os.environ.get("CUSTOMER_VERIFICATION_TRANSPORT", "").strip().lower()
        if gevent_mode and transport in ("", "lean"):
            _log_to_stderr()
            from customer_auth.kong.supervisor import supervise

            supervise(name, processes_wanted())
            sys.exit(0)
        _log_to_stderr()
        import logging

        logging.getLogger(LOGGER_NAME).error(
            "%s needs the lean transport in gevent mode (-g); running one process", PROCESSES
        )
    if gevent_mode:
        from gevent import monkey

        monkey.patch_all()


def _log_to_stderr() -> bool:
    """Logs at CUSTOMER_VERIFICATION_LOG_LEVEL, or INFO (and returns False) if it names no level."""
    import logging
    import os

    level = os.environ.get("CUSTOMER_VERIFICATION_LOG_LEVEL", "").strip().upper() or "INFO"
    logging.basicConfig(
        stream=sys.stderr,  # Kong copies it into its error log; stdout belongs to --dump
        level=level if level in LOG_LEVELS else "INFO",
        format="%(asctime)s %(levelname)s customer_verification: %(message)s",
    )
    return level in LOG_LEVELS


def serve(
    name: str, plugin: type, version: str, priority: int, schema: Sequence[Mapping[str, Any]]
) -> None:
    """Runs the plugin server as Kong starts it (``--dump``: only the description, on stdout)."""
    import logging
    import os
    import socket

    from customer_auth import metrics
    from customer_auth.core.terms import LOGGER_NAME
    from customer_auth.kong.processes import METRICS_MESSAGE, child_channel
    from customer_auth.kong.server import start_dedicated_server
    from customer_auth.store.credentials import Credentials

    log = logging.getLogger(LOGGER_NAME)
    if not _log_to_stderr():
        log.error(
            "CUSTOMER_VERIFICATION_LOG_LEVEL must be one of %s; logging at INFO",
            ", ".join(LOG_LEVELS),
        )
    if "--dump" not in sys.argv:  # Kong's query_cmd: only the JSON, and no port taken
        health = lambda: Credentials.shared().health()  # noqa: E731
        channel = child_channel()
        if channel is None:
            metrics.serve_from_environment(health)
        else:  # a child: the supervisor collects its metrics from a port of its own
            port = metrics.serve(0, health, forever=True).server_port
            with socket.socket(fileno=os.dup(channel)) as announce:
                announce.send(METRICS_MESSAGE + str(port).encode())
        accept_raw_bytes()
    start_dedicated_server(name, plugin, version, priority, list(schema))


def accept_raw_bytes() -> None:
    """Lets every byte a client may send reach the plugin.

    HTTP allows any byte from 0x80 up in a header value, and Kong passes header values and bodies
    on as they are, as MessagePack strings. kong-pdk decodes those as strict UTF-8, so one such
    byte kills the connection's handler and the request gets a 5xx. Decoded with surrogateescape
    instead, they arrive as text that the parsers refuse (400), and a body re-encodes to its
    exact bytes; answers carrying such text go back to Kong as the same bytes.
    """
    import functools
    import types

    import kong_pdk.listener
    import msgpack

    kong_pdk.listener.msgpack = types.SimpleNamespace(
        Unpacker=functools.partial(msgpack.Unpacker, unicode_errors="surrogateescape"),
        packb=functools.partial(msgpack.packb, unicode_errors="surrogateescape"),
    )
