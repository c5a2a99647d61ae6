"""The clock on a connection's unfinished request: a client that never finishes a line is closed.

A slowloris client opens connections and sends each a few bytes of a line that
never ends, holding a buffer and a connection slot for as long as it likes.
`SlowLineWatch` bounds that: a transport tells it after a chunk that left an
unfinished request (or while its timer runs) whether the chunk finished any,
and the watch closes the connection once one unfinished request has been held
for `timeout_s`.

The hot path costs a transport one field check per chunk, and a busy
connection never churns timers: the timer is armed when a partial request
appears with none armed, and is neither moved nor cancelled while chunks
arrive.  When it fires it looks: nothing held, it stops; a request finished
since it was armed (what it timed may be gone), it is armed once more;
otherwise the connection is closed.  So a connection is closed no sooner than
`timeout_s` after its partial request began, and no later than twice that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class SlowLineWatch:
    """One connection's timer on its unfinished request."""

    __slots__ = ("armed", "expired", "finished_one", "holding", "timeout_s")

    def __init__(
        self, timeout_s: float, holding: Callable[[], bool], expired: Callable[[], bool]
    ) -> None:
        self.timeout_s = timeout_s
        self.holding = holding
        """Does the connection hold an unfinished request now?"""
        self.expired = expired
        """Called when an unfinished request outlived the timeout: True when it closed the
        connection, False to wait once more (the connection was not being read, say)."""
        self.armed: asyncio.TimerHandle | None = None
        self.finished_one = False  # a request was finished since the timer was armed

    def update(self, finished: bool) -> None:
        """After a chunk that left a partial request, or any chunk while the timer runs."""
        if self.armed is None:
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
        if not self.holding():
            return
        if self.finished_one or not self.expired():
            self._arm()
