"""Local TCP ports for the throwaway servers tests start: a free one to give a server, and a
wait until the server just started listens on it (or has died, with what its log says)."""

import socket
import subprocess
import time
from collections.abc import Callable


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_listening(
    port: int, process: subprocess.Popen, timeout: float, failure: Callable[[], str]
) -> None:
    """Return once 127.0.0.1:port accepts; raise RuntimeError(failure()) if the process exits
    first or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(failure()) from None
            time.sleep(0.05)
