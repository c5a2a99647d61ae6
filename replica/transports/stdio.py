"""The stdio transport: Maelstrom's way of running a node.

Requests arrive on stdin, one JSON line each; replies, and any message the
node sends a peer, leave on stdout, which carries nothing else (logs go to
stderr).  The node starts unbound and takes its identity from `init`.  End of
input ends the node.

A thread reads stdin with plain blocking reads, which work the same on pipes,
files and terminals and leave the descriptor's flags alone, and hands each
chunk to the event loop, waiting until the loop has handled it: a slow node
slows the reader instead of queueing input without bound.  Everything else
runs on the loop, so `send` is the one path to stdout for replies and gossip
alike; the lines one chunk produced go out in one write.  A reply deferred
until its quorum is known holds the replies after it, so they leave in
request order.  Every message on
stdin is trusted, peer messages included: the harness is the network.

An oversized line gets error 12 and is skipped; the lines after it are still
served.  (Over TCP the connection would be closed, but stdin is the node's
only input.)
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import select
import threading
from typing import cast

from replica.errors import ErrorCode
from replica.fd_io import write_all
from replica.framing import LineFramer
from replica.node.quorums import Deferred
from replica.node.router import Node
from replica.session import trusted

log = logging.getLogger("replica.transports.stdio")

READ_SIZE = 1 << 16


class StdioTransport:
    """Feed stdin lines to a node and write its messages to stdout."""

    def __init__(
        self,
        node: Node,
        *,
        gossip_interval_ms: int | None = None,
        stdin_fd: int = 0,
        stdout_fd: int = 1,
    ) -> None:
        self.node = node
        self.gossip_interval_ms = gossip_interval_ms
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.framer = LineFramer(node.settings.max_line_bytes)
        self.session = trusted()  # stdin is the harness's network: every message is trusted
        self._out: list[bytes] = []
        self._waiting: collections.deque[bytes | Deferred[bytes | None]] = collections.deque()
        """Replies behind one that waits for its quorum, in request order."""
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._gossip: asyncio.Task[None] | None = None
        self._announced = False

    async def run(self) -> None:
        """Serve until stdin ends, stdout is gone, or `stop()` is called."""
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        reader = threading.Thread(target=self._read_stdin, name="stdin-reader", daemon=True)
        reader.start()
        try:
            await self._done
        finally:
            self._flush()
            if self._gossip is not None:
                self._gossip.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._gossip

    def stop(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def send(self, line: bytes) -> None:
        """Queue one encoded line (with its newline) for stdout; written on this loop turn."""
        self._out.append(line)
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    # -- input --------------------------------------------------------------------------

    def _read_stdin(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            chunk = self._read_chunk()
            handled: concurrent.futures.Future[None] = concurrent.futures.Future()
            try:
                loop.call_soon_threadsafe(self._deliver, chunk, handled)
            except RuntimeError:  # the loop has closed: the node is shutting down
                return
            if not chunk:
                return
            handled.result()

    def _read_chunk(self) -> bytes:
        while True:
            try:
                return os.read(self.stdin_fd, READ_SIZE)
            except BlockingIOError:  # stdin was left non-blocking by whoever started us
                select.select([self.stdin_fd], [], [])
            except OSError as exc:
                log.error("cannot read stdin: %s", exc)
                return b""

    def _deliver(self, chunk: bytes, handled: concurrent.futures.Future[None]) -> None:
        try:
            if chunk:
                self._on_data(chunk)
            else:
                self._on_data(b"\n")  # a last line without its newline still counts
                log.debug("end of input")
                self.stop()
        except Exception:
            log.exception("failed to handle input")
        finally:
            handled.set_result(None)

    def _on_data(self, data: bytes) -> None:
        framer = self.framer
        lines = framer.feed(data)
        while True:
            for line in lines:
                reply = self._handle(line)
                if reply is None:
                    continue
                if type(reply) is bytes and not self._waiting:
                    self._out.append(reply)
                else:
                    self._waiting.append(reply)
                    if type(reply) is not bytes:
                        cast(Deferred[bytes | None], reply).add_done_callback(self._quorum_known)
            if not framer.overflowed:
                break
            log.warning("skipping a line over max_line_bytes")
            self._out.append(self.node.line_too_long())
            lines = framer.recover()
        self._flush()
        if not self._announced and self.node.node_id is not None:
            self._announced = True
            peers = [n for n in self.node.node_ids if n != self.node.node_id]
            log.info("initialised as %s; peers: %s", self.node.node_id, ", ".join(peers) or "none")
        self._attach_replication()

    def _quorum_known(self, _: object) -> None:
        """Queue, in request order, the replies no longer behind a quorum still unknown."""
        waiting = self._waiting
        while waiting:
            first = waiting[0]
            reply: bytes | None
            if type(first) is bytes:
                reply = first
            else:
                deferred = cast(Deferred[bytes | None], first)
                if not deferred.done():
                    break
                if deferred.exception() is not None:
                    reply = self.node.error_line(ErrorCode.CRASH, "internal error")
                else:
                    reply = deferred.result()
            waiting.popleft()
            if reply is not None:
                self.send(reply)

    def _handle(self, line: bytes) -> bytes | Deferred[bytes | None] | None:
        try:
            return self.node.handle_line(line, self.session)
        except Exception:  # the node answers every request itself; this is a bug
            log.exception("failed to handle a line")
            return self.node.error_line(ErrorCode.CRASH, "internal error")

    # -- output -------------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._out:
            return
        data = b"".join(self._out)
        self._out.clear()
        try:
            write_all(self.stdout_fd, data)
        except OSError as exc:  # the reader of stdout is gone: nobody left to serve
            log.error("cannot write stdout: %s", exc)
            self.stop()

    # -- replication --------------------------------------------------------------------

    def _attach_replication(self) -> None:
        """Once `init` names peers, gossip to them over stdout (Maelstrom routes it)."""
        if self._gossip is not None or self.gossip_interval_ms is None:
            return
        replicator = self.node.replicator
        if replicator is None:
            return
        from replica.replication.peer_links import gossip_forever

        def outbox(peer: str, line: bytes) -> bool:
            self.send(line)
            return True

        replicator.outbox = outbox
        # Maelstrom's network need not keep one sender's messages in order, which
        # collecting a tombstone relies on: over stdio tombstones are kept
        replicator.tombstones.enabled = False
        for peer in replicator.peers:
            replicator.link_up(peer)  # the network between stdio nodes is Maelstrom's
        self._gossip = asyncio.get_running_loop().create_task(
            gossip_forever(replicator, self.gossip_interval_ms)
        )


async def run_stdio(node: Node, gossip_interval_ms: int | None = None) -> None:
    """Serve `node` over stdin/stdout until stdin ends."""
    await StdioTransport(node, gossip_interval_ms=gossip_interval_ms).run()
