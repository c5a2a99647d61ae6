"""The TCP transport: clients and peers connect, send lines, read reply lines.

Framing happens at the `asyncio.Protocol` level, with no stream objects in the
way: each `data_received` chunk goes through the connection's `LineFramer`,
every complete line goes to `Node.handle_line`, and all replies one chunk
produced leave in a single `transport.write`.

When the node commits synchronously, a chunk's replies wait for the commit
that makes its writes durable (`Durability.barrier`), and a later chunk's
replies wait behind an earlier one's, so a connection sees its replies in
order.  If that commit fails (or takes longer than the commit timeout),
every reply of the chunk becomes error 13: a write that is not on disk is
never acknowledged, to a client or to a peer.  A chunk that changed nothing
and only read keys with no change on its way to disk (or asked `status`)
needs no barrier, so reads and `status` answer while the disk is stuck.  A
reply deferred until its quorum is known (`w`, `r`) is held the same way, in
order, and becomes its error reply if the quorum fails.

A client that sends and never reads cannot grow the node's memory: once a
connection's unsent replies, in the transport's buffer or held for their
commit, pass the high-water mark, the node stops reading from it until they
fall below the low-water mark, so the client's own sends block in its kernel
buffers.  A client that half-closes (EOF) still gets the replies to all it
sent, held ones included, before the node closes the connection.  A line over
`max_line_bytes` gets error 12 and closes its connection, and so does a
failed peer handshake; a connection that holds an unfinished request past
`partial_line_timeout_ms` is closed (`slow_lines`); no other input closes one,
and no connection error reaches beyond its own connection.  A listening port
keeps at most `max_connections` open: one more gets a single error line
(`over_limit`) and is closed.

Each JSON-lines connection keeps its own `Session` (what it has proven) and
hands it to the node with every line.  A connection that receives a peer
challenge has `HANDSHAKE_TIMEOUT_S` to answer it, or is closed; one whose
handshake succeeds reads peer-sized lines from then on.  Over TLS the
session also carries the node ids the client's verified certificate names
(`Session.certified`), the only ids its hello may claim.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import orjson

from replica.durable.durability import barrier_failure
from replica.errors import ErrorCode
from replica.framing import LineFramer
from replica.node.router import Node
from replica.replication import peer_handshake
from replica.session import Session
from replica.transports.held_replies import HeldChunk, Reply
from replica.transports.slow_lines import SlowLineWatch
from replica.transports.tls import certified_names
from replica.transports.tls_accept import TlsListener

log = logging.getLogger("replica.transports.tcp")

WRITE_HIGH_WATER = 256 * 1024  # unsent reply bytes at which a connection stops being read
WRITE_LOW_WATER = 64 * 1024
SHOWS_NO_STATE = frozenset({"error", "status_ok", "init_ok"})  # kept when a commit fails


class ServedConnection(asyncio.Protocol):
    """What every client connection shares, whatever protocol it speaks.

    A subclass turns input into replies (`replies_to`) and says how a reply
    reads when its writes could not be made durable (`not_durable`); this
    class sends each read's replies in one write, holds them until their
    commit when the node commits synchronously (in order per connection),
    and stops reading while the client does not read its replies, or while
    the replies held for commits pass the same high-water mark.
    """

    kind = "connection"

    def __init__(self, node: Node, connections: set[Any]) -> None:
        self.node = node
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.reading_paused = False
        self.writing_blocked = False  # the transport's buffer passed its high-water mark
        self.holding_too_much = False  # the held replies did
        self.held: collections.deque[HeldChunk] = collections.deque()
        self.held_bytes = 0
        self.input_done = False
        timeout_s = node.settings.partial_line_timeout_ms / 1000
        self.slow_line = SlowLineWatch(timeout_s, self.holds_partial, self._slow_line_expired)

    def replies_to(self, data: bytes) -> tuple[list[Reply], bool]:
        """The replies to every complete request in `data`; True to close after them."""
        raise NotImplementedError

    def not_durable(self, replies: list[bytes], failure: str) -> list[bytes]:
        """The held replies, rewritten as errors because their commit failed."""
        raise NotImplementedError

    def holds_partial(self) -> bool:
        """Does the connection hold the start of a request whose end has not arrived?"""
        raise NotImplementedError

    def over_limit(self) -> bytes:
        """The one line a connection over `max_connections` gets before it is closed."""
        limit = self.node.settings.max_connections
        return self.node.error_line(
            ErrorCode.TEMPORARILY_UNAVAILABLE,
            f"max_connections ({limit}) reached on this port: connection closed",
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self.peer = f"{peername[0]}:{peername[1]}"
        if len(self.connections) >= self.node.settings.max_connections:
            self.node.refusals.connections += 1
            log.info("refusing %s from %s: max_connections reached", self.kind, self.peer)
            self.input_done = True
            self.transport.write(self.over_limit())
            self.transport.close()
            return
        self.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        log.debug("%s from %s", self.kind, self.peer)

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.input_done:
            return
        durability = self.node.durability
        barrier = None
        if durability is None or not durability.holds_replies:
            replies, close = self.replies_to(data)
        else:
            changes, reads = durability.changes, durability.unsettled_reads
            replies, close = self.replies_to(data)
            if replies and (durability.changes != changes or durability.unsettled_reads != reads):
                barrier = durability.barrier()
        if close:
            self.input_done = True
        if barrier is None and not self.held and all(type(r) is bytes for r in replies):
            self._send(cast(list[bytes], replies), close)
            return
        chunk = HeldChunk(barrier, replies, close, self._release)
        self.held.append(chunk)
        self.held_bytes += chunk.size
        if barrier is not None and durability is not None:
            durability.after_commit(self._release)
        if self.held_bytes > WRITE_HIGH_WATER:
            self._update_reading()

    def _release(self) -> None:
        """Send the held replies whose commits and quorums are done, oldest first."""
        while self.held:
            chunk = self.held[0]
            if not chunk.committed():
                if self.node.durability is not None:
                    self.node.durability.after_commit(self._release)
                break
            if chunk.unresolved:
                break  # its last quorum's answer releases it
            self.held.popleft()
            self.held_bytes -= chunk.size
            replies = chunk.replies_now(self.broken)
            failure = barrier_failure(chunk.barrier)
            if failure is not None:
                log.error(
                    "answering %d requests from %s with errors: %s",
                    len(replies),
                    self.peer,
                    failure,
                )
                replies = self.not_durable(replies, failure)
            self._send(replies, chunk.close)
        self._update_reading()

    def broken(self) -> bytes:
        """The reply to a request whose deferred reply failed (a bug, logged where it happened)."""
        return self.node.error_line(ErrorCode.CRASH, "internal error")

    def _send(self, replies: list[bytes], close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if replies:
            transport.write(b"".join(replies))
        if close:
            transport.close()  # after the replies above are flushed

    def eof_received(self) -> bool:
        # The client is done sending: the replies it is owed still go out,
        # those held for their commit too, and then the transport closes.
        self.input_done = True
        if not self.held:
            return False
        self.held.append(HeldChunk(None, [], True, self._release))
        return True

    def pause_writing(self) -> None:
        self.writing_blocked = True
        self._update_reading()

    def resume_writing(self) -> None:
        self.writing_blocked = False
        self._update_reading()

    def _update_reading(self) -> None:
        """Read only while the client takes its replies and the held ones stay under the mark."""
        if self.held_bytes > WRITE_HIGH_WATER:
            self.holding_too_much = True
        elif self.held_bytes <= WRITE_LOW_WATER:
            self.holding_too_much = False
        pause = self.writing_blocked or self.holding_too_much
        transport = self.transport
        if pause == self.reading_paused or transport is None or transport.is_closing():
            return
        self.reading_paused = pause
        if self.input_done:
            return
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _slow_line_expired(self) -> bool:
        """Close the connection for its unfinished request; False while it is not being read."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return True
        if self.reading_paused:
            return False  # its client could not have finished the request
        self.node.refusals.partial_lines += 1
        timeout_ms = self.node.settings.partial_line_timeout_ms
        log.info(
            "closing %s from %s: unfinished request after %d ms", self.kind, self.peer, timeout_ms
        )
        self.input_done = True
        transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.slow_line.cancel()
        self.connections.discard(self)
        self.held.clear()
        self.held_bytes = 0
        if exc is not None:
            log.debug("%s from %s lost: %s", self.kind, self.peer, exc)


class Connection(ServedConnection):
    """One JSON-lines connection: framed lines in, the node's replies out."""

    lines: list[bytes]  # those `replies_to` last answered

    def __init__(self, node: Node, connections: set[Any]) -> None:
        super().__init__(node, connections)
        self.framer = LineFramer(node.settings.max_line_bytes)
        self.session = Session()
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.counted_link = False  # the node counts this connection among the peer's

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:  # a TLS port: only a member's certificate makes a member
            self.session.certified = certified_names(tls.getpeercert())

    def replies_to(self, data: bytes) -> tuple[list[Reply], bool]:
        handle_line = self.node.handle_line
        session = self.session
        replies: list[Reply] = []
        lines = self.framer.feed(data)
        for line in lines:
            try:
                reply = handle_line(line, session)
            except Exception:  # the node answers every request itself; this is a bug
                log.exception("failed to handle a line from %s", self.peer)
                reply = self.node.error_line(ErrorCode.CRASH, "internal error")
            if reply is not None:
                replies.append(reply)
            if session.news and self._handshake_moved():
                return replies, True
        if self.slow_line.armed is not None or self.framer.buffered:
            self.slow_line.update(bool(lines))
        if not self.framer.overflowed:
            return replies, False
        log.info("closing %s: line over max_line_bytes", self.peer)
        replies.append(self.node.line_too_long())
        return replies, True

    def _handshake_moved(self) -> bool:
        """Act on what the handshake changed in the session; True to close the connection."""
        session = self.session
        session.news = False
        if session.refused is not None:
            log.info("closing %s: peer handshake refused: %s", self.peer, session.refused)
            return True
        if session.peer is not None:
            self.framer.max_line_bytes = peer_handshake.PEER_MAX_LINE_BYTES
            self._stop_handshake_timer()
            if not self.counted_link:
                self.counted_link = True
                self.node.peer_link(session.peer, opened=True)
        elif session.challenge is not None and self.handshake_timer is None:
            loop = asyncio.get_running_loop()
            self.handshake_timer = loop.call_later(
                peer_handshake.HANDSHAKE_TIMEOUT_S, self._handshake_expired
            )
        return False

    def _handshake_expired(self) -> None:
        self.handshake_timer = None
        if self.session.peer is not None or self.transport is None:
            return
        timeout = peer_handshake.HANDSHAKE_TIMEOUT_S
        peer_handshake.abandoned(
            self.session, f"it did not answer the challenge within {timeout:g} s"
        )
        log.info("closing %s: peer handshake not finished in time", self.peer)
        self.transport.close()

    def _stop_handshake_timer(self) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_handshake_timer()
        peer_handshake.abandoned(
            self.session,
            "it closed the connection before proving the cluster secret "
            "(it found this node's proof wrong: another secret?)",
        )
        if self.counted_link and self.session.peer is not None:
            self.counted_link = False
            self.node.peer_link(self.session.peer, opened=False)
        super().connection_lost(exc)

    def holds_partial(self) -> bool:
        return self.framer.buffered > 0

    def not_durable(self, replies: list[bytes], failure: str) -> list[bytes]:
        return [_not_durable(reply, failure) for reply in replies]


def _not_durable(reply: bytes, failure: str) -> bytes:
    """Error 13 in place of a reply whose request's writes may not be on disk."""
    message: Any = orjson.loads(reply)
    envelope = "type" not in message and isinstance(message.get("body"), dict)
    body = message["body"] if envelope else message
    if body.get("type") in SHOWS_NO_STATE:
        return reply  # the request changed nothing and shows no key's state
    error = {"type": "error", "code": int(ErrorCode.CRASH), "text": f"write not durable: {failure}"}
    for field in ("in_reply_to", "msg_id"):
        if field in body:
            error[field] = body[field]
    if envelope:
        message["body"] = error
        return orjson.dumps(message) + b"\n"
    return orjson.dumps(error) + b"\n"


ConnectionType = Callable[[Node, set[Any]], asyncio.Protocol]
"""A protocol class built from the node and the server's set of open connections."""


class TcpServer:
    """A listening socket and the connections it accepted (JSON lines, or another protocol)."""

    def __init__(
        self,
        node: Node,
        connection_type: ConnectionType = Connection,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """With `tls`, the port serves TLS only."""
        self.node = node
        self.connection_type = connection_type
        self.tls = tls
        self.connections: set[Any] = set()
        self.server: asyncio.Server | TlsListener | None = None

    def _protocol(self) -> asyncio.Protocol:
        return self.connection_type(self.node, self.connections)

    async def start(self, host: str, port: int) -> None:
        if self.tls is not None:
            listener = TlsListener(self.node, self.tls, self._protocol)
            await listener.start(host, port)
            self.server = listener
            return
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, host, port, reuse_address=True)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the server listens (useful when it was started on port 0)."""
        if self.server is None:
            return []
        return [s.getsockname()[:2] for s in self.server.sockets]

    async def close(self) -> None:
        """Stop accepting, drop every open connection, and wait for the listener to close."""
        if self.server is None:
            return
        self.server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        await self.server.wait_closed()


async def serve_tcp(
    node: Node, host: str, port: int, tls: ssl.SSLContext | None = None
) -> TcpServer:
    """Listen on `host:port` (TLS only with `tls`) and answer every connection with `node`."""
    server = TcpServer(node, tls=tls)
    await server.start(host, port)
    return server
