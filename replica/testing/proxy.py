"""TCP proxies between nodes, so a test can cut, slow, throttle and reset every directed link.

Contract: `LinkProxy.cut()` makes its direction deliver nothing (connections torn
down, new dials refused) until `heal()`; `set_latency` delivers every chunk,
both ways, a delay (± uniform jitter) after it arrived without ever reordering
bytes; `set_bandwidth` paces each direction of each connection to a rate;
`reset()` aborts every live connection with a TCP reset and keeps listening.
`Partitioner` owns a cluster's proxies and cuts links by groups or by name,
healing every link it is not told to cut; latency, bandwidth and resets it
applies to the links named, and `clear()` takes latency and caps off them all.

In a proxied cluster node X reaches node Y only through its own proxy
P(X→Y): X's gossip to Y and Y's answers to it travel one connection that X
dialled to the proxy.  Cutting a proxy is what a network partition looks like
to both nodes: every connection through it is torn down and the listening
socket is closed, so X's redials are refused until the link heals.  Nothing
inside the node is mocked; clients still reach each node at its real port.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any, Literal

from replica.testing.ports import LOOPBACK
from replica.testing.shapes import Link

CHUNK = 1 << 16
REBIND_TIMEOUT = 5.0
RESET_TIMEOUT = 5.0
MAX_BUFFERED = 4 << 20  # bytes held back per direction before the proxy stops reading
PACING_SLICES_PER_SECOND = 50  # a capped direction sends in slices of 20 ms worth

__all__ = ["Direction", "Link", "LinkProxy", "Partitioner", "Tap"]

Direction = Literal["sent", "replies"]
"""`sent`: what the dialling node wrote; `replies`: what the node dialled answered."""
Tap = Callable[[Direction, bytes], None]


def _abort(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Drop the connection at once; with `reset`, the peer gets a TCP RST rather than a FIN."""
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Direction:
    """One direction of one connection: chunks delivered in arrival order, each at its time.

    The reader stamps each chunk with max(previous stamp, arrival + delay +
    jitter), so a chunk is never delivered before the one ahead of it; the
    deliverer sleeps until the stamp, then paces the chunk at the proxy's
    bandwidth.  While nothing is held back and no fault is set, chunks go
    straight through.
    """

    def __init__(
        self,
        proxy: LinkProxy,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.direction: Direction = direction
        self.reader = reader
        self.writer = writer
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        self.held = 0  # bytes read and not yet delivered
        self.room = asyncio.Event()
        self.room.set()
        self.last_due = 0.0
        self.paced_until = 0.0

    async def run(self) -> None:
        """Forward until the reader ends and everything held back is delivered."""
        deliverer = asyncio.create_task(self._deliver())
        try:
            with contextlib.suppress(ConnectionError, OSError):
                await self._read()
            if self.writer.transport.is_closing():
                return  # aborted: nothing held back can be delivered
            self.queue.put_nowait(None)
            await deliverer
        finally:
            deliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliverer

    async def _read(self) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        while data := await self.reader.read(CHUNK):
            proxy.bytes_forwarded += len(data)
            if proxy.tap is not None:
                proxy.tap(self.direction, data)
            if self.held == 0 and proxy.latency_ms == 0 and proxy.bandwidth is None:
                self.writer.write(data)
                await self.writer.drain()
                continue
            self.last_due = max(self.last_due, loop.time() + proxy.delay_sample())
            self.held += len(data)
            self.queue.put_nowait((self.last_due, data))
            while self.held >= MAX_BUFFERED:
                self.room.clear()
                await self.room.wait()

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(ConnectionError, OSError):
            while (item := await self.queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - loop.time()))
                for piece in self._slices(data):
                    rate = self.proxy.bandwidth
                    if rate is not None:
                        begin = max(self.paced_until, loop.time())
                        self.paced_until = begin + len(piece) / rate
                        await asyncio.sleep(max(0.0, self.paced_until - loop.time()))
                    if self.writer.transport.is_closing():
                        return
                    self.writer.write(piece)
                    await self.writer.drain()
                self.held -= len(data)
                if self.held < MAX_BUFFERED:
                    self.room.set()

    def _slices(self, data: bytes) -> Iterable[bytes]:
        rate = self.proxy.bandwidth
        size = len(data) if rate is None else max(1, rate // PACING_SLICES_PER_SECOND)
        return (data[start : start + size] for start in range(0, len(data), size))


class LinkProxy:
    """Listens on `listen_port` and forwards each connection to `target_port`.

    Faults other than a cut apply to live connections at once and to new
    ones; jitter draws from `rng` (a fresh `random.Random` unless given), so a
    seeded proxy jitters the same way every run.  An observer sees what
    crosses without slowing what it does not watch: `tap(direction, chunk)`
    gets every chunk as it is read, before any delay, and `on_accept()` runs
    for every connection accepted.
    """

    def __init__(
        self,
        listen_port: int,
        target_port: int,
        host: str = LOOPBACK,
        *,
        rng: random.Random | None = None,
        tap: Tap | None = None,
        on_accept: Callable[[], None] | None = None,
    ) -> None:
        self.host = host
        self.tap = tap
        self.on_accept = on_accept
        self.listen_port = listen_port
        self.target_port = target_port
        self.rng = rng if rng is not None else random.Random()
        self.bytes_forwarded = 0
        self.connections_accepted = 0
        self.latency_ms = 0.0
        self.jitter_ms = 0.0
        self.bandwidth: int | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._forwarding: set[asyncio.Task[None]] = set()

    @property
    def is_cut(self) -> bool:
        return self._server is None

    # -- faults ----------------------------------------------------------------------------

    def set_latency(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Deliver every chunk, both ways, `delay_ms` ± `jitter_ms` after it arrived, in order.

        The jitter is uniform and a delay never goes below zero; `set_latency(0)` removes it.
        """
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError(f"latency {delay_ms} ms ± {jitter_ms} ms: both must be >= 0")
        self.latency_ms = float(delay_ms)
        self.jitter_ms = float(jitter_ms) if delay_ms > 0 else 0.0

    def set_bandwidth(self, bytes_per_second: int | None) -> None:
        """Pace each direction of each connection to `bytes_per_second`; None lifts the cap.

        Each slice of n bytes leaves n / rate seconds after the one before it
        (or after it arrived), so N bytes take at least N / rate seconds.
        """
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"a bandwidth cap must be > 0 bytes/s, not {bytes_per_second}")
        self.bandwidth = bytes_per_second

    def delay_sample(self) -> float:
        """Seconds to hold the chunk arriving now: the latency plus a jitter draw, at least 0."""
        if self.latency_ms == 0:
            return 0.0
        jitter = self.rng.uniform(-self.jitter_ms, self.jitter_ms) if self.jitter_ms else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000

    async def reset(self) -> None:
        """Abort every live connection with a TCP reset but keep listening: the nodes redial.

        What a crashed middlebox or a flapping NIC does; returns once the
        aborted connections are gone from `state()`.
        """
        for writer in list(self._writers):
            _abort(writer, reset=True)
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=RESET_TIMEOUT)

    def state(self) -> dict[str, Any]:
        """What is set on this link, and how many connections run through it, for display."""
        return {
            "cut": self.is_cut,
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "bandwidth": self.bandwidth,
            "connections": len(self._forwarding),
        }

    # -- listening -------------------------------------------------------------------------

    async def start(self) -> None:
        await self.heal()

    async def heal(self) -> None:
        """Listen again on the same port (no-op while listening)."""
        if self._server is not None:
            return
        deadline = time.monotonic() + REBIND_TIMEOUT
        while True:
            try:
                self._server = await asyncio.start_server(
                    self._serve, self.host, self.listen_port, reuse_address=True
                )
                return
            except OSError:
                # The port is outside the ephemeral range, so nothing should hold it;
                # a lingering socket of our own gets a moment to go away.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def cut(self) -> None:
        """Stop listening and tear down every connection through the proxy, both ways."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            _abort(writer, reset=False)
        if server is not None:
            await server.wait_closed()

    async def close(self) -> None:
        await self.cut()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        for task in handlers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- forwarding ------------------------------------------------------------------------

    async def _serve(self, down_reader: asyncio.StreamReader, down: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(down)
        self.connections_accepted += 1
        if self.on_accept is not None:
            self.on_accept()
        try:
            try:
                up_reader, up = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                return  # the target is down: the dialler sees its connection close
            self._writers.add(up)
            try:
                if self.is_cut or down.transport.is_closing():
                    return  # cut while we were dialling
                self._forwarding.add(task)
                await self._forward_both_ways(down_reader, down, up_reader, up)
            finally:
                self._forwarding.discard(task)
                self._writers.discard(up)
                up.close()
        finally:
            self._writers.discard(down)
            down.close()
            self._handlers.discard(task)

    async def _forward_both_ways(
        self,
        down_reader: asyncio.StreamReader,
        down: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up: asyncio.StreamWriter,
    ) -> None:
        """Forward until either side closes and what it sent is delivered; then both go."""
        pumps = [
            asyncio.create_task(_Direction(self, "sent", down_reader, up).run()),
            asyncio.create_task(_Direction(self, "replies", up_reader, down).run()),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await pump


class Partitioner:
    """The full mesh of link proxies of a cluster, cut and healed by groups or by links."""

    def __init__(self, proxies: Mapping[Link, LinkProxy]) -> None:
        self.proxies = dict(proxies)
        self.nodes = sorted({node for link in self.proxies for node in link})

    @property
    def cut_links(self) -> set[Link]:
        return {link for link, proxy in self.proxies.items() if proxy.is_cut}

    async def partition(self, groups: Iterable[Collection[str]]) -> None:
        """Cut exactly the links between different groups; every node must be in one group."""
        group_of: dict[str, int] = {}
        for index, group in enumerate(groups):
            for node in group:
                if node in group_of:
                    raise ValueError(f"node {node!r} is in two groups")
                group_of[node] = index
        missing = set(self.nodes) - set(group_of)
        if missing:
            raise ValueError(f"nodes {sorted(missing)} are in no group")
        await self.cut_exactly(
            link for link in self.proxies if group_of[link[0]] != group_of[link[1]]
        )

    async def cut_exactly(self, links: Iterable[Link]) -> None:
        """Cut the given directed links and heal every other one."""
        to_cut = set(links)
        unknown = to_cut - set(self.proxies)
        if unknown:
            raise ValueError(f"no proxy for links {sorted(unknown)}")
        for link, proxy in self.proxies.items():
            if link in to_cut:
                await proxy.cut()
            else:
                await proxy.heal()

    async def cut(self, links: Iterable[Link]) -> None:
        """Cut the given directed links as well, leaving every other link as it is."""
        await self.cut_exactly(self.cut_links | set(links))

    async def isolate(self, node: str) -> None:
        """Cut every link from and to `node` as well."""
        if node not in self.nodes:
            raise ValueError(f"no node {node!r}")
        await self.cut(link for link in self.proxies if node in link)

    async def heal_all(self) -> None:
        """Every cut healed; latency and bandwidth caps stay (see `clear`)."""
        await self.cut_exactly(())

    def _known(self, links: Iterable[Link]) -> list[LinkProxy]:
        named = set(links)
        unknown = named - set(self.proxies)
        if unknown:
            raise ValueError(f"no proxy for links {sorted(unknown)}")
        return [self.proxies[link] for link in sorted(named)]

    async def set_latency(
        self, links: Iterable[Link], delay_ms: float, jitter_ms: float = 0.0
    ) -> None:
        """`LinkProxy.set_latency` on each of the given links; 0 removes it."""
        for proxy in self._known(links):
            proxy.set_latency(delay_ms, jitter_ms)

    async def set_bandwidth(self, links: Iterable[Link], bytes_per_second: int | None) -> None:
        """`LinkProxy.set_bandwidth` on each of the given links; None lifts the cap."""
        for proxy in self._known(links):
            proxy.set_bandwidth(bytes_per_second)

    async def reset(self, links: Iterable[Link]) -> None:
        """Abort every live connection through the given links; they keep listening."""
        for proxy in self._known(links):
            await proxy.reset()

    async def clear(self) -> None:
        """No latency and no bandwidth cap on any link; cuts stay as they are."""
        for proxy in self.proxies.values():
            proxy.set_latency(0)
            proxy.set_bandwidth(None)

    def state(self) -> dict[Link, dict[str, Any]]:
        """`LinkProxy.state()` of every link."""
        return {link: proxy.state() for link, proxy in sorted(self.proxies.items())}

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.close()
