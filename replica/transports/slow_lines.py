"""The clock on a connection's unfinished request: a client that never finishes a line is closed.

A slowloris client opens connections and sends each a few bytes of a line that
never ends, holding a buffer and a connection slot for as long as it likes.
`SlowLineWatch` bounds that: a transport tells it after each chunk whether an
unfinished request is left and whether the chunk finished any, and it fires
once one unfinished request has been held for `timeout_s`.

The hot path costs a transport one field check per chunk: the watch is
consulted only when a chunk leaves a partial request or a timer is armed.
The timer is armed when a partial request first appears and is not moved
while chunks arrive; when it fires after the chunk that finished the request
it timed and left a new one behind, it is armed once more instead.  So a
connection is closed no sooner than `timeout_s` after its partial request
began, and no later than twice that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SlowLineWatch:
    """One connection's timer on its unfinished request; `expired` closes it (True) or not."""

    __slots__ = ("armed", "expired", "finished_one", "timeout_s")

    def __init__(self, timeout_s: float, expired: Callable[[], bool]) -> None:
        self.timeout_s = timeout_s
        self.expired = expired
        """Called when a partial request outlived the timeout: True when it closed the connection,
        False to wait once more (the connection was not being read, say)."""
        self.armed: asyncio.TimerHandle | None = None
        self.finished_one = False  # a request was finished since the timer was armed

    def update(self, holding: bool, finished: bool) -> None:
        """After a chunk: is a partial request held now, and did the chunk finish any?"""
        if not holding:
            self.cancel()
        elif self.armed is None:
            self._arm()
        elif finished:
            self.finished_one = True

    def cancel(self) -> None:
        if self.armed is not None:
            self.armed.cancel()
            self.armed = None

    def _arm(self) -> None:
        self.finished_one = False
        loop = asyncio.get_running_loop()
        self.armed = loop.call_later(self.timeout_s, self._fire)

    def _fire(self) -> None:
        self.armed = None
        if self.finished_one or not self.expired():
            self._arm()
