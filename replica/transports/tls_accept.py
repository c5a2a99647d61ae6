"""A listening port that serves TLS only and sees every handshake that fails.

Contract: `TlsListener` binds `host:port`, accepts each socket itself and runs
the server side of the TLS handshake on it (`loop.connect_accepted_socket`,
bounded by `HANDSHAKE_TIMEOUT_S`).  When the handshake succeeds the port's
protocol gets `connection_made` with the TLS transport, as with
`create_server(ssl=...)`; when it fails (plaintext, a certificate from another
CA, a timeout, a reset) the socket is closed, the node counts it (`status`
`tls_handshakes_failed`) and logs the client's address and the reason, each
distinct reason once.  At most `max_connections` handshakes run at once; a
socket past that is closed unanswered and counted as refused.

Why not `create_server(ssl=...)`: there a failed handshake never reaches the
application, so a node would drop a misconfigured peer without a word.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from replica.node.router import Node
from replica.replication.peer_handshake import (
    HANDSHAKE_TIMEOUT_S,
    ReasonLog,
    tls_failure_reason,
)

log = logging.getLogger("replica.transports.tls_accept")

BACKLOG = socket.SOMAXCONN


class TlsListener:
    """The listening sockets of one TLS port and the handshakes under way on them."""

    def __init__(
        self, node: Node, tls: ssl.SSLContext, make_protocol: Callable[[], asyncio.Protocol]
    ) -> None:
        self.node = node
        self.tls = tls
        self.make_protocol = make_protocol
        self.sockets: list[socket.socket] = []
        self.handshakes: set[asyncio.Task[None]] = set()
        self.accepting: list[asyncio.Task[None]] = []
        self.failures = ReasonLog(log)

    async def start(self, host: str, port: int) -> None:
        """Bind every address `host` names (as `create_server` does) and start accepting."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            listening = socket.socket(family, kind, proto)
            try:
                listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listening.bind(address)
                listening.listen(BACKLOG)
                listening.setblocking(False)
            except OSError:
                listening.close()
                for bound in self.sockets:
                    bound.close()
                raise
            self.sockets.append(listening)
        for listening in self.sockets:
            self.accepting.append(asyncio.ensure_future(self._accept_forever(listening)))

    async def _accept_forever(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                accepted, address = await loop.sock_accept(listening)
            except OSError as exc:  # e.g. out of file descriptors: wait, then go on
                log.warning("accepting on %s failed: %s", listening.getsockname(), exc)
                await asyncio.sleep(0.1)
                continue
            if len(self.handshakes) >= self.node.settings.max_connections:
                self.node.refusals.connections += 1
                accepted.close()
                continue
            task = asyncio.ensure_future(self._handshake(accepted, address))
            self.handshakes.add(task)
            task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, accepted: socket.socket, address: Any) -> None:
        loop = asyncio.get_running_loop()
        host = address[0] if isinstance(address, tuple) and address else "?"
        sends: bool | None = False
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                sends = await _sends_anything(loop, accepted)
        except TimeoutError:
            sends = None
        finally:
            if not sends:  # not handed over: the socket is still ours to close
                accepted.close()
        if sends is None:
            self._failed(host, f"it sent nothing within {HANDSHAKE_TIMEOUT_S:g} s")
        if not sends:
            return  # or a port probe: it connected and closed without a byte
        try:
            await loop.connect_accepted_socket(
                self.make_protocol,
                accepted,
                ssl=self.tls,
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S,
            )
        except ssl.SSLError as exc:
            self._failed(host, tls_failure_reason(exc))
        except (ConnectionResetError, BrokenPipeError) as exc:
            why = type(exc).__name__
            self._failed(host, f"it closed the connection ({why}): does it trust this node's CA?")
        except OSError as exc:  # the handshake timed out, among others
            self._failed(host, str(exc) or type(exc).__name__)

    def _failed(self, host: str, why: str) -> None:
        self.node.refusals.tls_handshakes += 1
        self.failures.note(f"TLS handshake from {host} failed: {why}")

    def close(self) -> None:
        """Stop accepting and drop every handshake under way."""
        for task in (*self.accepting, *self.handshakes):
            task.cancel()

    async def wait_closed(self) -> None:
        """Until every accepting and handshaking task has ended; then close the sockets."""
        await asyncio.gather(*self.accepting, *self.handshakes, return_exceptions=True)
        self.accepting.clear()
        for listening in self.sockets:
            with contextlib.suppress(OSError):
                listening.close()


async def _sends_anything(loop: asyncio.AbstractEventLoop, accepted: socket.socket) -> bool:
    """Wait until the socket is readable: False if it closed without sending a byte."""
    readable = loop.create_future()
    fd = accepted.fileno()
    loop.add_reader(fd, _settle, readable)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    try:
        return accepted.recv(1, socket.MSG_PEEK) != b""
    except OSError:  # reset before a byte arrived
        return False


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
