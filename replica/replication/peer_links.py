"""Outgoing peer connections and the gossip ticker.

Each node dials every peer and keeps one connection per peer, on which it sends
its own gossip and anti-entropy messages and reads the peer's answers.  A new
connection first says `peer_hello` (see `replica.replication.peer_handshake`) and counts as
up only once the peer accepts it, and, with a cluster secret, once each side
has proven it holds the secret; a refusal or a failed proof is logged once per
distinct reason and closes the connection.  What the node reads on a link it
dialled comes from the node it authenticated, so it is handled as that peer's.
A dead or refusing peer is redialled with capped exponential backoff and
jitter, so a cluster restarting at once does not dial in lockstep.  With TLS,
a peer is dialled with this node's certificate and must present one naming
the peer id dialled; a TLS handshake that fails (another CA, another name) is
logged with its reason, once per reason, and redialled like any failure.
Sending never waits: a link that is down or whose write buffer is full refuses
the line, and the delta tracker keeps the keys pending, so a slow or dead peer
never delays client requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import orjson

from replica.framing import LineFramer
from replica.replication import peer_handshake
from replica.replication.replicator import Replicator
from replica.session import Session

log = logging.getLogger("replica.peers")

STABLE_LINK_SECONDS = 1.0
CANCEL_RETRY_SECONDS = 0.1  # how long a cancelled task may take to end before it is cancelled again
HANDSHAKE_TIMEOUT_S = peer_handshake.HANDSHAKE_TIMEOUT_S
HIGH_WATER = 1 << 20  # bytes queued to one peer before gossip to it waits for the next tick


_CLOSED: dict[str, object] = {"type": "error", "text": "closed before answering"}


class _PeerProtocol(asyncio.Protocol):
    def __init__(self, links: PeerLinks, peer: str) -> None:
        self.links = links
        self.peer = peer
        self.framer = LineFramer(peer_handshake.PEER_MAX_LINE_BYTES)
        self.transport: asyncio.Transport | None = None
        self.writable = True
        loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.hello_id: int | None = None  # of the handshake message awaiting its answer
        self.answer: asyncio.Future[dict[str, object]] = loop.create_future()  # to that message
        self.session = Session()  # proven once the handshake is done
        self.lost: Exception | None = None  # why the connection ended, if it ended on an error

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
            if self.session.peer is not None:
                self.links.handle_line(line, self.session)  # answers to us, never replied to
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

    def expect(self, msg_id: int) -> asyncio.Future[dict[str, object]]:
        """A fresh future for the answer to handshake message `msg_id`."""
        self.hello_id = msg_id
        if self.answer.done():
            self.answer = asyncio.get_running_loop().create_future()
            if self.closed.done():
                self.answer.set_result(_CLOSED)
        return self.answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.answer.done():
            self.answer.set_result(_CLOSED)

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
        handle_line: Callable[[bytes, Session], object],
        addresses: Mapping[str, tuple[str, int]],
        node_ids: Sequence[str],
        *,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        backoff_min: float = 0.05,
        backoff_max: float = 0.5,
    ) -> None:
        """`handle_line` takes the peers' answers; `node_ids` is the cluster, in order.

        With `secret`, a peer is used only once it proved it holds the same secret;
        with `tls` (`peer_client_context`), only over TLS to a certificate naming it.
        """
        self.replicator = replicator
        self.handle_line = handle_line
        self.secret = secret
        self.tls = tls
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
        """Every link closed and every task of the links ended, however they were waiting.

        A cancellation can be lost on its way into a task (one that races an
        answer, or one swallowed inside an awaited call), and a task that lost
        it would redial forever while the node waits to stop, so each task is
        cancelled again until it ends.
        """
        for link in self._links.values():
            if link.transport is not None:
                link.transport.close()
        tasks = {*self._tasks, *self._drains}
        while tasks:
            for task in tasks:
                task.cancel()
            _, tasks = await asyncio.wait(tasks, timeout=CANCEL_RETRY_SECONDS)

    async def _keep_connected(self, peer: str) -> None:
        host, port = self.addresses[peer]
        loop = asyncio.get_running_loop()
        delay = self.backoff_min
        while True:
            try:
                _, link = await loop.create_connection(
                    lambda: _PeerProtocol(self, peer),
                    host,
                    port,
                    ssl=self.tls,
                    server_hostname=None if self.tls is None else peer,
                    ssl_handshake_timeout=None if self.tls is None else HANDSHAKE_TIMEOUT_S,
                )
            except ssl.SSLError as exc:
                why = peer_handshake.tls_failure_reason(exc)
                where = f"peer {peer} at {host}:{port}"
                self._refusals[peer].note(f"{where}: TLS handshake failed: {why}")
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
        """Run the handshake: True once the peer accepted this node (and proved the secret)."""
        try:
            async with asyncio.timeout(peer_handshake.HANDSHAKE_TIMEOUT_S):
                why = await self._handshake(peer, link)
        except TimeoutError:
            timeout = peer_handshake.HANDSHAKE_TIMEOUT_S
            why = f"peer {peer} did not finish the handshake within {timeout:g} s"
        if why is None:
            link.session.peer = peer
            self._refusals[peer].forget()
            return True
        if why:
            self._refusals[peer].note(why)
        return False

    async def _handshake(self, peer: str, link: _PeerProtocol) -> str | None:
        """None once accepted; else why not ("" for a link that merely closed)."""
        secret = self.secret
        me = self.replicator.node_id
        nonce = peer_handshake.new_nonce() if secret is not None else None
        answer = await self._ask(peer, link, peer_handshake.hello(me, self.node_ids, nonce))
        kind = answer.get("type")
        if kind == peer_handshake.HELLO_OK and secret is None:
            return None
        if kind == peer_handshake.HELLO_OK:
            return (
                f"peer {peer} accepted this node without proving the cluster secret "
                "(no secret_file on it?); not using the link"
            )
        if kind == "error" and "code" in answer:
            return f"peer {peer} refused this node: {answer.get('text')}"
        if answer is _CLOSED and self.tls is not None:
            # TLS 1.3: the acceptor checks this node's certificate after the handshake
            # is done on this side, and a refusal only ends the connection.
            lost = link.lost
            ended = " unanswered"
            if isinstance(lost, ssl.SSLError):
                ended = f": {peer_handshake.tls_failure_reason(lost)}"
            return (
                f"peer {peer} ended the TLS connection{ended} "
                "(does it trust this node's certificate?)"
            )
        if kind != peer_handshake.CHALLENGE:
            log.debug("peer %s: no handshake answer: %s", peer, answer.get("text"))
            return ""
        if secret is None or nonce is None:
            return f"peer {peer} sent a challenge and this node has no cluster secret"
        mine, why = peer_handshake.check_challenge(secret, me, peer, nonce, answer)
        if mine is None:
            return why
        answer = await self._ask(peer, link, {"type": peer_handshake.PROOF, "proof": mine.hex()})
        if answer.get("type") == peer_handshake.HELLO_OK:
            return None
        if answer.get("type") == "error" and "code" in answer:
            return f"peer {peer} refused this node's proof: {answer.get('text')}"
        return ""

    async def _ask(
        self, peer: str, link: _PeerProtocol, body: dict[str, object]
    ) -> dict[str, object]:
        """Send one handshake message and wait for its answer (an error body if none)."""
        line = self.replicator.envelope(peer, body)  # numbers the body
        answer = link.expect(cast(int, body["msg_id"]))
        if not link.send(line):
            return _CLOSED
        return await asyncio.shield(answer)

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
