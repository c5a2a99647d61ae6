"""A chunk's replies held until its commit and its quorums are done, in order per connection.

`HeldChunk` is one read's replies: the commit barrier they wait for (None:
none) and the replies, each ready (`bytes`) or deferred until its quorum is
known (`Deferred`).  It counts its deferred replies still unresolved, so
telling whether it may leave costs one field check however many replies it
holds, and calls `ready` once the last of them resolves.  A deferred reply
counts `DEFERRED_REPLY_BYTES` toward a connection's held bytes, since its
size is unknown until it resolves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

from replica.node.quorums import Deferred

DEFERRED_REPLY_BYTES = 1024  # what a reply waiting for its quorum counts toward the high-water mark

Reply = bytes | Deferred[bytes | None]
"""One request's reply: ready, or deferred until its quorum is known."""


class HeldChunk:
    """One read's replies, whether the connection closes after them, and their size in bytes."""

    __slots__ = ("barrier", "close", "replies", "size", "unresolved")

    def __init__(
        self,
        barrier: asyncio.Future[None] | None,
        replies: list[Reply],
        close: bool,
        ready: Callable[[], None],
    ) -> None:
        """`ready` is called when the last deferred reply resolves."""
        self.barrier = barrier
        self.replies = replies
        self.close = close
        deferred = [cast(Deferred[bytes | None], r) for r in replies if type(r) is not bytes]
        self.size = sum(len(r) for r in replies if type(r) is bytes)
        self.size += DEFERRED_REPLY_BYTES * len(deferred)
        self.unresolved = len(deferred)

        def resolved(_: object) -> None:
            self.unresolved -= 1
            if not self.unresolved:
                ready()

        for reply in deferred:
            reply.add_done_callback(resolved)

    def committed(self) -> bool:
        """Whether the commit it waits for, if any, has ended (well or not)."""
        return self.barrier is None or self.barrier.done()

    def replies_now(self, broken: Callable[[], bytes]) -> list[bytes]:
        """The replies, once every deferred one resolved; `broken()` for one that failed."""
        out: list[bytes] = []
        for reply in self.replies:
            if type(reply) is bytes:
                out.append(reply)
                continue
            deferred = cast(Deferred[bytes | None], reply)
            ready = broken() if deferred.exception() is not None else deferred.result()
            if ready is not None:
                out.append(ready)
        return out
