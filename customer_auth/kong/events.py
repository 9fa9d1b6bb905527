"""A plugin event: the handler's greenlet, and the ``kong`` object its PDK calls go through.

The lean transport (transport.py) and the handler switch to each other directly, with no
queue between them: a connection carrying a message for the event waits as its ``waiter`` while
the handler runs; the handler, at a PDK call, switches back to it with the call, and is resumed
with Kong's result by whichever connection brings the next Step. The handler still waits on
gevent I/O as usual (the Postgres driver's waits) meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from greenlet import GreenletExit, getcurrent, greenlet
from kong_pdk.exception import PDKException

if TYPE_CHECKING:
    from customer_auth.kong.transport import LeanTransport

RET = "ret"  # the answer's Data when the handler has finished
# Kong never answers these
TERMINAL_METHODS = frozenset(("kong.response.exit", "kong.response.error"))


class Failure:
    """What a handler ended with when it raised: the error answer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


# handed by the sweep to a connection that has waited too long for a handler
TIMED_OUT: Final = object()

# What a handler gives its waiter: a PDK call ({"Method", "Args"}), RET, or a Failure.
Output = dict[str, Any] | str | Failure


class Event(greenlet):
    """One call of a plugin phase, and the greenlet it runs in.

    A connection that needs the handler's next output (a PDK call, or the end) parks itself as
    ``waiter`` and is the greenlet's parent meanwhile, so that a handler finishing returns to it.
    The handler, at a PDK call, switches to its waiter with the call; when none waits (a gevent
    Timeout or a kill interrupted a call and the handler went on), the call is kept as ``ready``
    and answers the next Step Kong sends, whose result was for the interrupted call.
    """

    def __init__(
        self, event_id: int, phase: Callable[[Any], None], transport: LeanTransport
    ) -> None:
        super().__init__(self._run, parent=transport.hub)
        self.id = event_id
        self.phase = phase
        self.transport = transport
        self.waiter: greenlet | None = None
        self.ready: Output | None = None  # an output made while no connection waited for it
        self.parked = False  # the handler waits at a PDK call for Kong's answer
        self.ended = False  # Kong will send nothing more: PDK calls fail at once
        self.since = time.monotonic()

    def _run(self) -> Output:
        outcome: Output
        try:
            self.phase(self.transport.kong)
            outcome = RET
        except (Exception, GreenletExit) as error:
            outcome = Failure(error)
        if self.waiter is None:
            self.ready = outcome
        return outcome  # to the parent: the waiting connection, or the hub

    def wait_on(self, waiter: greenlet | None) -> None:
        self.waiter = waiter
        if not self.dead:
            self.parent = waiter or self.transport.hub

    # -- in the handler's greenlet --------------------------------------------------------------
    def call(self, method: str, args: Sequence[Any]) -> Any:
        """One PDK call: Kong runs it and steps its result back."""
        if self.ended:
            return self._result(
                method,
                None,
                "the request has already ended (kong.response.exit or Kong "
                "gave it up): Kong answers no more PDK calls",
            )
        if method == "kong.log" or method.startswith("kong.log."):
            # as kong-pdk
            args = [arg if type(arg) in (str, int, list, dict) else str(arg) for arg in args]
        output = {"Method": method, "Args": args}
        self.parked = True
        try:
            waiter = self.waiter
            if waiter is not None:  # it stops waiting (wait_on(None)) as soon as it resumes
                reply = waiter.switch(output)
            else:
                self.ready = output
                reply = self.transport.hub.switch()
        except BaseException:
            if self.ready is output:  # never sent to Kong
                self.ready = None
            raise
        finally:
            self.parked = False
        if method in TERMINAL_METHODS:
            return None  # returns at once, as in kong-pdk; the handler should return now
        data, error = reply
        return self._result(method, data, error)

    def _result(self, method: str, data: Any, error: str | None) -> Any:
        if self.transport.lua_style:
            return data, error
        if error:
            raise PDKException("exception from %s: %s" % (method, error))
        return data


class Namespace:
    """``kong``, ``kong.request``, ...: calling one makes the PDK call of its dotted name. The tree
    is shared by every event (the call finds its event as the current greenlet) and grows once per
    name the plugin code uses."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Namespace:
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        child = Namespace(self._name + "." + attribute)
        setattr(self, attribute, child)
        return child

    def __call__(self, *args: Any) -> Any:
        event = getcurrent()
        if type(event) is not Event:
            raise PDKException("%s called outside a plugin handler's greenlet" % self._name)
        return event.call(self._name, args)

    def __repr__(self) -> str:
        return "<kong PDK %s>" % self._name
