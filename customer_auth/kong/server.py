"""kong-pdk's ``start_dedicated_server`` on the lean transport: kong-pdk still parses the
options, builds the plugin server and names the socket; the lean transport serves it (on the
socket, or on a supervisor's channel), and instances and events are numbered by this process's
ids (customer_auth/kong/ids.py).

``CUSTOMER_VERIFICATION_TRANSPORT=kong-pdk`` runs stock kong-pdk instead (the reference, and the
other side of an A/B measurement); so does a server started without ``-g``: the lean transport is
gevent's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from kong_pdk import cli as pdk_cli

from customer_auth.core.terms import LOGGER_NAME
from customer_auth.kong.ids import Ids, number_instances
from customer_auth.kong.processes import child_channel, child_slot
from customer_auth.kong.transport import LeanTransport

log = logging.getLogger(LOGGER_NAME)

TRANSPORT = "CUSTOMER_VERIFICATION_TRANSPORT"
TRANSPORTS = ("lean", "kong-pdk")


def chosen_transport() -> str:
    """The transport CUSTOMER_VERIFICATION_TRANSPORT names: lean (the default) or kong-pdk."""
    name = os.environ.get(TRANSPORT, "").strip().lower() or "lean"
    if name not in TRANSPORTS:
        log.error("%s must be one of %s; using lean", TRANSPORT, ", ".join(TRANSPORTS))
        return "lean"
    return name


class _LeanListener:
    """Takes the place of kong-pdk's ``UnixStreamServer`` in its own ``start_dedicated_server``
    (same arguments), so that kong-pdk still parses the options, builds the plugin server and
    names the socket, and this transport serves it."""

    def __init__(
        self,
        plugin_server: Any,
        path: str,
        sock_name: str,
        use_gevent: bool,
        listen_queue_size: int,
    ) -> None:
        self._transport = LeanTransport(plugin_server)
        self._path, self._backlog = os.path.join(path, sock_name), listen_queue_size

    def serve_forever(self) -> None:
        channel = child_channel()
        if channel is None:
            self._transport.serve_forever(self._path, self._backlog)
        else:
            self._transport.serve_channel(channel)


class _Numbered:
    """Wraps the listener kong-pdk's ``start_dedicated_server`` builds, so that the plugin
    server's instances and events are numbered by ids of this process (customer_auth/kong/ids.py):
    never an id another process, or an earlier run, gave."""

    def __init__(self, listener: Callable[..., Any]) -> None:
        self._listener = listener

    def __call__(self, plugin_server: Any, *args: Any, **options: Any) -> Any:
        ids = Ids(child_slot() or 0)
        number_instances(plugin_server, ids)
        plugin_server.event_id = ids.next()  # kong-pdk's own events, on its own transport
        plugin_server.ids = ids  # the lean transport's events
        return self._listener(plugin_server, *args, **options)


def start_dedicated_server(
    name: str,
    plugin: type,
    version: str | None = None,
    priority: int = 0,
    schema: Sequence[Any] = (),
) -> Any:
    """kong-pdk's ``start_dedicated_server``, with its options, on the lean transport.

    ``--dump``, a server without ``-g`` and ``CUSTOMER_VERIFICATION_TRANSPORT=kong-pdk`` are
    kong-pdk's own, but for the ids (customer_auth/kong/ids.py).
    """
    args = pdk_cli.parse(dedicated=True)
    listener = pdk_cli.UnixStreamServer
    if not args.dump and args.gevent and chosen_transport() == "lean":
        listener = _LeanListener
    pdk_cli.UnixStreamServer = _Numbered(listener)
    return pdk_cli.start_dedicated_server(name, plugin, version, priority, list(schema))
