"""Outgoing peer connections and the gossip ticker.

Each node dials every peer and keeps one connection per peer, on which it sends
its own gossip and anti-entropy messages and reads the peer's answers.  A dead
peer is redialled with capped exponential backoff and jitter, so a cluster
restarting at once does not dial in lockstep.  Sending never waits: a link that
is down or whose write buffer is full refuses the line, and the delta tracker
keeps the keys pending, so a slow or dead peer never delays client requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Mapping
from typing import cast

from replica.framing import LineFramer
from replica.node import Node
from replica.replicator import Replicator

log = logging.getLogger("replica.peers")

STABLE_LINK_SECONDS = 1.0
HIGH_WATER = 1 << 20  # bytes queued to one peer before gossip to it waits for the next tick


class _PeerProtocol(asyncio.Protocol):
    def __init__(self, links: PeerLinks, peer: str) -> None:
        self.links = links
        self.peer = peer
        self.framer = LineFramer(links.node.settings.max_line_bytes)
        self.transport: asyncio.Transport | None = None
        self.writable = True
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        for line in self.framer.feed(data):
            self.links.node.handle_line(line)  # answers to our messages: routed, never replied to
        if self.framer.overflowed and self.transport is not None:
            log.warning("peer %s sent a line over max_line_bytes; reconnecting", self.peer)
            self.transport.close()

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, line: bytes) -> bool:
        if self.transport is None or self.transport.is_closing() or not self.writable:
            return False
        self.transport.write(line)
        return True


class PeerLinks:
    """One redialling connection to every peer, and the outbox gossip writes into."""

    def __init__(
        self,
        node: Node,
        addresses: Mapping[str, tuple[str, int]],
        *,
        backoff_min: float = 0.05,
        backoff_max: float = 0.5,
    ) -> None:
        self.node = node
        self.addresses = dict(addresses)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._links: dict[str, _PeerProtocol] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._drains: set[asyncio.Task[None]] = set()
        if node.replicator is not None:
            node.replicator.outbox = self.send

    def send(self, peer: str, line: bytes) -> bool:
        link = self._links.get(peer)
        return link is not None and link.send(line)

    def start(self) -> None:
        for peer in self.addresses:
            self._tasks.append(asyncio.create_task(self._keep_connected(peer)))

    async def close(self) -> None:
        tasks = [*self._tasks, *self._drains]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for link in self._links.values():
            if link.transport is not None:
                link.transport.close()

    async def _keep_connected(self, peer: str) -> None:
        host, port = self.addresses[peer]
        loop = asyncio.get_running_loop()
        delay = self.backoff_min
        while True:
            try:
                _, link = await loop.create_connection(
                    lambda: _PeerProtocol(self, peer), host, port
                )
            except OSError as exc:
                log.debug("peer %s at %s:%d unreachable: %s", peer, host, port, exc)
            else:
                self._links[peer] = link
                self._replicator_link(peer, up=True)
                log.info("connected to peer %s at %s:%d", peer, host, port)
                if self.node.replicator is not None:  # a healed link need not wait for a tick
                    pushing = asyncio.create_task(drain(self.node.replicator))
                    self._drains.add(pushing)
                    pushing.add_done_callback(self._drains.discard)
                connected_at = loop.time()
                await link.closed
                self._links.pop(peer, None)
                self._replicator_link(peer, up=False)
                log.info("lost peer %s", peer)
                if loop.time() - connected_at >= STABLE_LINK_SECONDS:
                    delay = self.backoff_min  # only a link that held up starts the backoff over
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(self.backoff_max, delay * 2)

    def _replicator_link(self, peer: str, *, up: bool) -> None:
        replicator = self.node.replicator
        if replicator is None:
            return
        if up:
            replicator.link_up(peer)
        else:
            replicator.link_down(peer)


async def gossip_forever(node: Node, interval_ms: int) -> None:
    """Every interval, push pending deltas slice by slice; a failure is logged, never fatal."""
    interval = interval_ms / 1000
    while True:
        await asyncio.sleep(interval)
        replicator = node.replicator
        if replicator is None:
            continue
        try:
            replicator.tick()
        except Exception:
            log.exception("gossip tick failed")
        await drain(replicator)


async def drain(replicator: Replicator) -> None:
    """Push every slice that is ready now, letting client requests in between slices."""
    try:
        while replicator.push():
            await asyncio.sleep(0)
    except Exception:
        log.exception("pushing deltas failed")
