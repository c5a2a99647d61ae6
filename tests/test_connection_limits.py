"""`max_connections` and `partial_line_timeout_ms`, against a real node over loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from replica.cli.config import ConfigError, parse_cluster
from replica.errors import ErrorCode
from replica.testing import LOOPBACK, ProxiedCluster, cluster, eventually

MAX_CONNECTIONS = 5
TIMEOUT_MS = 300
PATIENCE_S = 20.0  # generous: only the lower bound of the close is the contract's

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def node() -> AsyncIterator[ProxiedCluster]:
    async with cluster(
        1,
        memory=True,
        resp=True,
        max_connections=MAX_CONNECTIONS,
        partial_line_timeout_ms=TIMEOUT_MS,
    ) as running:
        yield running


async def open_json(running: ProxiedCluster) -> Stream:
    return await asyncio.open_connection(LOOPBACK, running.nodes["n1"].port)


async def ask(stream: Stream, body: dict[str, object]) -> dict[str, object]:
    reader, writer = stream
    writer.write(orjson.dumps(body) + b"\n")
    reply: dict[str, object] = orjson.loads(await asyncio.wait_for(reader.readline(), PATIENCE_S))
    return reply


async def closed_after(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """What the node sent until it closed the connection, and how long that took."""
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), PATIENCE_S)
    return data, time.monotonic() - start


async def test_connections_beyond_the_limit_get_an_error_line_and_are_closed(
    node: ProxiedCluster,
) -> None:
    streams = [await open_json(node) for _ in range(MAX_CONNECTIONS)]
    try:
        for stream in streams:  # each accepted and counted
            assert (await ask(stream, {"type": "status"}))["type"] == "status_ok"
        reader, writer = await open_json(node)
        data, _ = await closed_after(reader)
        writer.close()
        refusal = orjson.loads(data)
        assert refusal["code"] == int(ErrorCode.TEMPORARILY_UNAVAILABLE)
        assert f"max_connections ({MAX_CONNECTIONS})" in refusal["text"]
        for stream in streams:  # the open ones keep working
            reply = await ask(stream, {"type": "mv_write", "key": "k", "value": 1})
            assert reply["type"] == "mv_write_ok"
        status = await ask(streams[0], {"type": "status"})
        assert status["connections_refused"] == 1

        streams.pop()[1].close()  # one slot frees, and a new connection is served again

        async def try_one() -> dict[str, object] | None:
            stream = await open_json(node)
            try:
                return await ask(stream, {"type": "status"})
            except (ValueError, ConnectionError):
                return None
            finally:
                stream[1].close()

        await eventually(try_one, lambda r: r is not None and r["type"] == "status_ok", "a slot")
    finally:
        for _, writer in streams:
            writer.close()


async def test_a_redis_client_beyond_the_limit_gets_redis_s_error(node: ProxiedCluster) -> None:
    host, port = node.resp_address("n1")
    streams = [await asyncio.open_connection(host, port) for _ in range(MAX_CONNECTIONS)]
    try:
        for reader, writer in streams:
            writer.write(b"*1\r\n$4\r\nPING\r\n")
            assert await asyncio.wait_for(reader.readline(), PATIENCE_S) == b"+PONG\r\n"
        reader, writer = await asyncio.open_connection(host, port)
        data, _ = await closed_after(reader)
        writer.close()
        assert data == b"-ERR max number of clients reached\r\n"
    finally:
        for _, writer in streams:
            writer.close()


async def test_a_half_sent_line_is_closed_no_sooner_than_the_timeout(node: ProxiedCluster) -> None:
    reader, writer = await open_json(node)
    writer.write(b'{"type": "sta')
    data, waited = await closed_after(reader)
    writer.close()
    assert data == b""
    assert waited >= TIMEOUT_MS / 1000 * 0.9  # the clocks of two processes, a little apart
    host, port = node.resp_address("n1")
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"*1\r\n$4\r\nPI")
    data, waited = await closed_after(reader)
    writer.close()
    assert data == b"" and waited >= TIMEOUT_MS / 1000 * 0.9
    status = await ask(await open_json(node), {"type": "status"})
    assert status["partial_lines_closed"] == 2
    assert "unfinished request after 300 ms" in node.nodes["n1"].stderr_text()


async def test_lines_that_keep_finishing_are_never_closed(node: ProxiedCluster) -> None:
    """Chunks that each finish a line and start the next: every line is held briefly."""
    reader, writer = await open_json(node)
    try:
        line = orjson.dumps({"type": "status"}) + b"\n"
        writer.write(line[:5])
        deadline = time.monotonic() + 4 * TIMEOUT_MS / 1000
        answered = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(TIMEOUT_MS / 3000)
            writer.write(line[5:] + line[:5])
            reply = orjson.loads(await asyncio.wait_for(reader.readline(), PATIENCE_S))
            assert reply["type"] == "status_ok"
            answered += 1
        assert answered >= 4
    finally:
        writer.close()


NODES = [{"id": "n1", "host": LOOPBACK, "port": 7001}]


def test_the_limits_default_to_ten_thousand_and_must_be_positive() -> None:
    config = parse_cluster({"nodes": NODES})
    assert config.max_connections == 10_000 and config.partial_line_timeout_ms == 10_000
    settings = parse_cluster({"cluster": {"max_connections": 7}, "nodes": NODES}).node_settings()
    assert settings.max_connections == 7
    for name in ("max_connections", "partial_line_timeout_ms"):
        for value in (0, -1, "5"):
            with pytest.raises(ConfigError, match=name):
                parse_cluster({"cluster": {name: value}, "nodes": NODES})
