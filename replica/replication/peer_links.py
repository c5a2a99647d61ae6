"""Outgoing peer connections and the gossip ticker.

Each node dials every peer and keeps one connection per peer, on which it sends
its own gossip and anti-entropy messages and reads the peer's answers.  A new
connection first says `peer_hello` (see `replica.replication.peer_handshake`) and counts as
up only once the peer accepts it; a refusal is logged once per distinct reason.
A dead or refusing peer is redialled with capped exponential backoff and
jitter, so a cluster restarting at once does not dial in lockstep.  Sending never waits: a link that
is down or whose write buffer is full refuses the line, and the delta tracker
keeps the keys pending, so a slow or dead peer never delays client requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import orjson

from replica.framing import LineFramer
from replica.replication import peer_handshake
from replica.replication.replicator import Replicator

log = logging.getLogger("replica.peers")

STABLE_LINK_SECONDS = 1.0
HIGH_WATER = 1 << 20  # bytes queued to one peer before gossip to it waits for the next tick


class _PeerProtocol(asyncio.Protocol):
    def __init__(self, links: PeerLinks, peer: str) -> None:
        self.links = links
        self.peer = peer
        self.framer = LineFramer(peer_handshake.PEER_MAX_LINE_BYTES)
        self.transport: asyncio.Transport | None = None
        self.writable = True
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.hello_id: int | None = None
        self.answer: asyncio.Future[dict[str, object]] = loop.create_future()  # to the hello
        self.accepted = False

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
            if self.accepted:
                self.links.handle_line(line)  # answers to our messages, never replied to
            else:
                self._answer_to_hello(line)
        if self.framer.overflowed and self.transport is not None:
            log.warning("peer %s sent a line over the peer line limit; reconnecting", self.peer)
            self.transport.close()

    def _answer_to_hello(self, line: bytes) -> None:
        try:
            message = orjson.loads(line)
        except orjson.JSONDecodeError:
            return
        body = message.get("body") if isinstance(message, dict) else None
        if (
            isinstance(body, dict)
            and body.get("in_reply_to") == self.hello_id
            and not self.answer.done()
        ):
            self.answer.set_result(body)

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.answer.done():
            self.answer.set_result({"type": "error", "text": "closed before answering the hello"})

    def send(self, line: bytes) -> bool:
        if self.transport is None or self.transport.is_closing() or not self.writable:
            return False
        self.transport.write(line)
        return True


class PeerLinks:
    """One redialling connection to every peer, and the outbox gossip writes into."""

    def __init__(
        self,
        replicator: Replicator,
        handle_line: Callable[[bytes], object],
        addresses: Mapping[str, tuple[str, int]],
        node_ids: Sequence[str],
        *,
        backoff_min: float = 0.05,
        backoff_max: float = 0.5,
    ) -> None:
        """`handle_line` takes the peers' answers; `node_ids` is the cluster, in order."""
        self.replicator = replicator
        self.handle_line = handle_line
        self.node_ids = list(node_ids)
        self.addresses = dict(addresses)
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self._links: dict[str, _PeerProtocol] = {}
        self._refusals = {peer: peer_handshake.ReasonLog() for peer in self.addresses}
        self._tasks: list[asyncio.Task[None]] = []
        self._drains: set[asyncio.Task[None]] = set()
        replicator.outbox = self.send

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
                if not await self._say_hello(peer, link):
                    if link.transport is not None:
                        link.transport.close()
                elif await self._use(peer, link):
                    delay = self.backoff_min  # only a link that held up starts the backoff over
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(self.backoff_max, delay * 2)

    async def _say_hello(self, peer: str, link: _PeerProtocol) -> bool:
        """Send our hello and wait for the answer: True once the peer accepts this node."""
        body = peer_handshake.hello(self.replicator.node_id, self.node_ids)
        line = self.replicator.envelope(peer, body)  # numbers the body
        link.hello_id = body["msg_id"]
        if not link.send(line):
            return False
        try:
            answer = await asyncio.wait_for(
                asyncio.shield(link.answer), peer_handshake.HANDSHAKE_TIMEOUT_S
            )
        except TimeoutError:
            log.debug("peer %s did not answer the hello", peer)
            return False
        if answer.get("type") == peer_handshake.HELLO_OK:
            link.accepted = True
            self._refusals[peer].forget()
            return True
        if answer.get("type") == "error" and "code" in answer:
            self._refusals[peer].note(f"peer {peer} refused this node: {answer.get('text')}")
        else:
            log.debug("peer %s: no hello answer: %s", peer, answer.get("text"))
        return False

    async def _use(self, peer: str, link: _PeerProtocol) -> bool:
        """Gossip over an accepted link until it closes; True if it held up a while."""
        loop = asyncio.get_running_loop()
        self._links[peer] = link
        self._replicator_link(peer, up=True)
        log.info("connected to peer %s at %s:%d", peer, *self.addresses[peer])
        pushing = asyncio.create_task(drain(self.replicator))  # a healed link need not wait
        self._drains.add(pushing)
        pushing.add_done_callback(self._drains.discard)
        connected_at = loop.time()
        await link.closed
        self._links.pop(peer, None)
        self._replicator_link(peer, up=False)
        log.info("lost peer %s", peer)
        return loop.time() - connected_at >= STABLE_LINK_SECONDS

    def _replicator_link(self, peer: str, *, up: bool) -> None:
        replicator = self.replicator
        if up:
            replicator.link_up(peer)
        else:
            replicator.link_down(peer)


async def gossip_forever(replicator: Replicator, interval_ms: int) -> None:
    """Every interval, push pending deltas slice by slice; a failure is logged, never fatal."""
    interval = interval_ms / 1000
    while True:
        await asyncio.sleep(interval)
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
