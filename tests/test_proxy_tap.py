"""The link proxy's observer: `tap` sees every byte that crosses, each way, and `on_accept`
every connection, over real TCP on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from replica.testing.ports import LOOPBACK, free_listen_ports
from replica.testing.proxy import Direction, LinkProxy


@contextlib.asynccontextmanager
async def shouting_server() -> AsyncIterator[int]:
    """Answers every line with the line in capitals, so the two directions differ."""

    async def shout(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(shout, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_the_tap_sees_every_byte_each_way_in_order_and_on_accept_each_connection() -> None:
    seen: dict[Direction, bytearray] = {"sent": bytearray(), "replies": bytearray()}
    accepted: list[int] = []
    lines = [b"line %d %s\n" % (i, b"x" * (i * 997 % 5000)) for i in range(200)]
    async with shouting_server() as port:
        (listen_port,) = free_listen_ports(1)
        proxy = LinkProxy(
            listen_port,
            port,
            tap=lambda direction, data: seen[direction].extend(data),
            on_accept=lambda: accepted.append(len(accepted)),
        )
        await proxy.start()
        try:
            proxy.set_latency(5, 2)  # held chunks are tapped as they arrive, delivered later
            for _ in range(2):
                reader, writer = await asyncio.open_connection(LOOPBACK, listen_port)
                writer.write(b"".join(lines))
                await writer.drain()
                for line in lines:
                    assert await asyncio.wait_for(reader.readline(), 10) == line.upper()
                writer.close()
        finally:
            await proxy.close()
    assert bytes(seen["sent"]) == 2 * b"".join(lines)
    assert bytes(seen["replies"]) == 2 * b"".join(lines).upper()
    assert accepted == [0, 1]
    assert proxy.connections_accepted == 2


async def test_a_proxy_without_a_tap_forwards_as_before() -> None:
    async with shouting_server() as port:
        (listen_port,) = free_listen_ports(1)
        proxy = LinkProxy(listen_port, port)
        await proxy.start()
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, listen_port)
            writer.write(b"hello\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"HELLO\n"
            writer.close()
        finally:
            await proxy.close()
    assert proxy.bytes_forwarded == 12
