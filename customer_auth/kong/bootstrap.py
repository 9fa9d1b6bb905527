"""How the plugin server process starts: gevent's patches first, then logging, the metrics
listener and kong-pdk's start_dedicated_server on the lean transport. Imports nothing at module
level but the standard library, so that ``patch_for_gevent`` comes before any other import."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # CUSTOMER_VERIFICATION_LOG_LEVEL


def patch_for_gevent() -> None:
    """kong-pdk's gevent mode (``-g``) does not patch the standard library: without this, a lock
    held by one request or a database wait would stall every other request. It must come before
    any module that uses the standard library's I/O is imported."""
    if "-g" in sys.argv or "--gevent" in sys.argv:
        from gevent import monkey

        monkey.patch_all()


def serve(
    name: str, plugin: type, version: str, priority: int, schema: Sequence[Mapping[str, Any]]
) -> None:
    """Runs the plugin server as Kong starts it (``--dump``: only the description, on stdout)."""
    import logging
    import os

    from customer_auth import metrics
    from customer_auth.core.terms import LOGGER_NAME
    from customer_auth.kong.transport import start_dedicated_server
    from customer_auth.store.credentials import Credentials

    log = logging.getLogger(LOGGER_NAME)
    level = os.environ.get("CUSTOMER_VERIFICATION_LOG_LEVEL", "").strip().upper() or "INFO"
    logging.basicConfig(
        stream=sys.stderr,  # Kong copies it into its error log; stdout belongs to --dump
        level=level if level in LOG_LEVELS else "INFO",
        format="%(asctime)s %(levelname)s customer_verification: %(message)s",
    )
    if level not in LOG_LEVELS:
        log.error(
            "CUSTOMER_VERIFICATION_LOG_LEVEL must be one of %s; logging at INFO",
            ", ".join(LOG_LEVELS),
        )
    if "--dump" not in sys.argv:  # Kong's query_cmd: only the JSON, and no port taken
        metrics.serve_from_environment(lambda: Credentials.shared().health())
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
