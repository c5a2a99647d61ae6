"""TCP proxies between nodes, so a test can cut and heal every directed link.

Contract: `LinkProxy.cut()` makes its direction deliver nothing (connections torn
down, new dials refused) until `heal()`; `Partitioner` owns a cluster's proxies
and cuts links by groups or by name, healing every link it is not told to cut.

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
import time
from collections.abc import Collection, Iterable, Mapping

from replica.testing.ports import LOOPBACK

CHUNK = 1 << 16
REBIND_TIMEOUT = 5.0

Link = tuple[str, str]
"""(from node, to node): the direction of the dial."""


class LinkProxy:
    """Listens on `listen_port` and forwards each connection to `target_port`."""

    def __init__(self, listen_port: int, target_port: int, host: str = LOOPBACK) -> None:
        self.host = host
        self.listen_port = listen_port
        self.target_port = target_port
        self.bytes_forwarded = 0
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def is_cut(self) -> bool:
        return self._server is None

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
            writer.transport.abort()
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

    async def _serve(self, down_reader: asyncio.StreamReader, down: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(down)
        self.connections_accepted += 1
        try:
            try:
                up_reader, up = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                return  # the target is down: the dialler sees its connection close
            self._writers.add(up)
            try:
                if self.is_cut or down.transport.is_closing():
                    return  # cut while we were dialling
                await self._forward_both_ways(down_reader, down, up_reader, up)
            finally:
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
        """Forward until either side closes; then the whole connection goes."""
        pumps = [
            asyncio.create_task(self._pump(down_reader, up)),
            asyncio.create_task(self._pump(up_reader, down)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for pump in pumps:
                with contextlib.suppress(asyncio.CancelledError):
                    await pump

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK):
                self.bytes_forwarded += len(data)
                writer.write(data)
                await writer.drain()


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
        await self.cut_exactly(())

    async def close(self) -> None:
        for proxy in self.proxies.values():
            await proxy.close()
