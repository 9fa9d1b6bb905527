"""A tiny plugin of the tests' own, to test the Kong stand-in and the transports themselves
(test_kong_standin.py, test_transport.py). The action is the request's ``x-action`` header."""

import json
import os
import sys

if "-g" in sys.argv:
    from gevent import monkey

    monkey.patch_all()

import gevent

from customer_auth.kong import transport

# the transport CUSTOMER_VERIFICATION_TRANSPORT names
from customer_auth.kong.server import start_dedicated_server

version = "0.1.0"
priority = 10
Schema = ({"greeting": {"type": "string", "default": "hello"}},)

# What PDK calls made after kong.response.exit gave back (the "stats" action shows them).
AFTER_EXIT = []


class Plugin:
    def __init__(self, config):
        self.config = config

    def access(self, kong):
        headers = kong.request.get_headers()
        ACTIONS.get(headers.get("x-action", ["pass"])[0], let_in)(self, kong, headers)


def let_in(plugin, kong, headers):
    kong.client.authenticate(None, {"id": "tiny"})  # as an auth plugin: the fail-closed rule's test
    kong.service.request.set_header("x-config", json.dumps(plugin.config, sort_keys=True))
    kong.service.request.set_header("x-multi-count", str(len(headers.get("x-multi", []))))


def step_error(plugin, kong, headers):
    """A PDK error answered with plugin.StepError (Kong 3.9 never sends it; the transport still
    takes it as kong-pdk does)."""
    try:
        kong.service.request.set_header("x-bad", {"not": "a header"})
    except Exception as error:  # --no-lua-style: a StepError arrives as PDKException
        kong.service.request.set_header("x-step-error", str(error))


def bad_header(plugin, kong, headers):
    """A PDK call that raises inside Kong: Kong never answers it."""
    kong.service.request.set_header("x-bad", {"not": "a header"})


def call_after_exit(plugin, kong, headers):
    kong.response.exit(403, {"message": "no"})
    try:
        AFTER_EXIT.append(repr(kong.service.request.set_header("x-late", "1")))
    except Exception as error:
        AFTER_EXIT.append(str(error))


def time_out(plugin, kong, headers):
    """A gevent Timeout fires during each PDK call named, then the handler exits."""
    for name in headers["x-calls"][0].split(","):
        try:
            with gevent.Timeout(float(headers["x-seconds"][0])):
                getattr(kong.node, name)()
        except gevent.Timeout:
            pass
    gevent.sleep(float(headers.get("x-after", ["0"])[0]))
    kong.response.exit(504, {"message": "timed out"})


def boom(plugin, kong, headers):
    raise RuntimeError("boom")


ACTIONS = {
    "exit": lambda plugin, kong, headers: kong.response.exit(418, {"message": "teapot"}),
    "error": lambda plugin, kong, headers: kong.response.error(429, "slow down"),
    "raise": boom,
    "bad-header": bad_header,
    "step-error": step_error,
    "nothing": lambda plugin, kong, headers: None,
    "call-after-exit": call_after_exit,
    "timeout": time_out,
    "hang": lambda plugin, kong, headers: gevent.sleep(3600),
    # an answer larger than the socket's buffer: sent in parts
    "big": lambda plugin, kong, headers: kong.service.request.set_header(
        "x-big", "b" * int(headers["x-size"][0])
    ),
    "stats": lambda plugin, kong, headers: kong.response.exit(200, {"message": "stats", **stats()}),
}


def stats():
    """What this process holds: live greenlets, open file descriptors, resident memory."""
    import gc

    import greenlet

    with open("/proc/self/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {
        "greenlets": sum(
            1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead
        ),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_kib": rss,
        "after_exit": AFTER_EXIT[-3:],
    }


if __name__ == "__main__":
    # Short timeouts, so that the tests see the sweep end what Kong gave up.
    transport.LeanTransport.handler_timeout = float(os.environ.get("TINY_HANDLER_TIMEOUT", 60))
    transport.LeanTransport.step_timeout = float(os.environ.get("TINY_STEP_TIMEOUT", 600))
    start_dedicated_server("tiny", Plugin, version, priority, list(Schema))
