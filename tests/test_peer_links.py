"""Closing the peer links ends every task they run, even one that lost its cancellation.

A node stops only once its peer links have; a redialling task that swallowed
one cancellation (racing an answer, or inside an awaited call) used to keep
the node from ever stopping.
"""

from __future__ import annotations

import asyncio
import itertools

from replica.keyspaces import Keyspaces
from replica.replication.peer_links import PeerLinks
from replica.replication.replicator import Replicator
from replica.testing.ports import LOOPBACK, free_listen_ports


async def stubborn(cancels_to_ignore: int, ended: asyncio.Event) -> None:
    """A task that survives its first cancellations, as a swallowed one looks from outside."""
    ignored = 0
    try:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                ignored += 1
                if ignored > cancels_to_ignore:
                    raise
    finally:
        ended.set()


async def test_close_ends_a_task_that_survived_a_cancellation() -> None:
    (port,) = free_listen_ports(1)  # nothing listens there: the link redials
    replicator = Replicator("n1", ["n2"], Keyspaces("n1"), itertools.count())
    links = PeerLinks(
        replicator, lambda line, session: None, {"n2": (LOOPBACK, port)}, ["n1", "n2"]
    )
    links.start()
    ended = asyncio.Event()
    links._tasks.append(asyncio.create_task(stubborn(2, ended)))
    await asyncio.sleep(0.05)  # let it reach its sleep, and the link its first dial
    closing = asyncio.create_task(links.close())
    done, _ = await asyncio.wait({closing}, timeout=5)
    assert closing in done, "close() still waiting for its tasks"
    assert ended.is_set()
    assert all(task.done() for task in links._tasks)
