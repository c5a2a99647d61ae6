"""The Redis-protocol port, driven by redis-py against real `replica serve` processes."""

from __future__ import annotations

import asyncio
import tempfile
import tomllib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from replica.cli.config import ConfigError, parse_cluster
from replica.node.handlers import RESP_COMMANDS
from replica.node.resp_terms import Request, ok
from replica.node.router import Node
from replica.transports.resp import HEADER_ALLOWANCE, serve_resp
from tests.harness import (
    LOOPBACK,
    NodeProcess,
    ProxiedCluster,
    eventually,
    free_listen_ports,
    free_ports,
    write_cluster,
    write_cluster_view,
)
from tests.proxy import LinkProxy

IDS = ("n1", "n2", "n3")
MAX_LINE_BYTES = 64 * 1024


class RespCluster:
    def __init__(self, nodes: dict[str, NodeProcess], resp_ports: dict[str, int]) -> None:
        self.nodes = nodes
        self.resp_ports = resp_ports

    def redis(self, node_id: str) -> aioredis.Redis:
        return resp2_client(self.resp_ports[node_id])


def resp2_client(port: int) -> aioredis.Redis:
    """A RESP2 client (redis-py from 8.0 asks for RESP3 unless told otherwise)."""
    return aioredis.Redis(host=LOOPBACK, port=port, protocol=2)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RespCluster]:
    with tempfile.TemporaryDirectory(prefix="replica-resp-") as name:
        ports = free_ports(2 * len(IDS))
        node_ports = dict(zip(IDS, ports[: len(IDS)], strict=True))
        resp_ports = dict(zip(IDS, ports[len(IDS) :], strict=True))
        config = write_cluster(
            Path(name),
            IDS,
            ports=node_ports.values(),
            resp_ports=resp_ports,
            gossip_interval_ms=50,
            max_line_bytes=MAX_LINE_BYTES,
        )
        nodes = {n: NodeProcess(config, n, LOOPBACK, node_ports[n]) for n in IDS}
        try:
            for node in nodes.values():
                node.start()
            for node_id, node in nodes.items():
                node.wait_ready()
                node.wait_ready(port=resp_ports[node_id])
            yield RespCluster(nodes, resp_ports)
        finally:
            for node in nodes.values():
                node.stop()
            for node in nodes.values():
                print(f"--- {node.node_id} log ---\n{node.stderr_text()}")


@pytest.fixture
async def r1(cluster: RespCluster) -> AsyncIterator[aioredis.Redis]:
    client = cluster.redis("n1")
    yield client
    await client.aclose()


async def test_node_logs_its_resp_address(cluster: RespCluster) -> None:
    async def logged() -> str:
        return cluster.nodes["n1"].stderr_text()

    await eventually(logged, lambda text: "n1 RESP on" in text, "the RESP address logged")
    assert f"{LOOPBACK}:{cluster.resp_ports['n1']}" in cluster.nodes["n1"].stderr_text()


async def test_mvreg_round_trip(r1: aioredis.Redis) -> None:
    assert await r1.execute_command("MVREG", "GET", "mv-round") == []
    assert await r1.execute_command("MVREG", "SET", "mv-round", "apple") == b"OK"
    assert await r1.execute_command("MVREG", "GET", "mv-round") == [b"apple"]
    assert await r1.execute_command("mvreg", "set", "mv-round", "banana") == b"OK"
    assert await r1.execute_command("mvreg", "get", "mv-round") == [b"banana"]


async def test_treg_round_trip_keeps_the_newest_timestamp(r1: aioredis.Redis) -> None:
    assert await r1.execute_command("TREG", "GET", "t-round") == []
    assert await r1.execute_command("TREG", "SET", "t-round", "a", 10) == b"OK"
    assert await r1.execute_command("TREG", "GET", "t-round") == [b"a", 10]
    assert await r1.execute_command("TREG", "SET", "t-round", "old", 5) == b"OK"
    assert await r1.execute_command("TREG", "GET", "t-round") == [b"a", 10]
    assert await r1.execute_command("TREG", "SET", "t-round", "new", 11) == b"OK"
    assert await r1.execute_command("TREG", "GET", "t-round") == [b"new", 11]


async def test_resp_writes_are_read_over_json_on_another_node(
    cluster: RespCluster, r1: aioredis.Redis
) -> None:
    await r1.execute_command("MVREG", "SET", "cross-mv", "from resp")
    await r1.execute_command("TREG", "SET", "cross-lww", "resp ts", 7)
    async with await cluster.nodes["n2"].connect() as json_client:

        async def read() -> tuple[dict, dict]:
            mv = await json_client.request({"type": "mv_read", "key": "cross-mv"})
            lww = await json_client.request({"type": "lww_read", "key": "cross-lww"})
            return mv, lww

        mv, lww = await eventually(
            read,
            lambda seen: seen[0]["values"] != [] and seen[1]["type"] == "lww_read_ok",
            "the RESP writes at n2",
        )
    assert [v["value"] for v in mv["values"]] == ["from resp"]
    assert (lww["value"], lww["timestamp"]) == ("resp ts", 7)


async def test_json_writes_are_read_over_resp_on_another_node(cluster: RespCluster) -> None:
    async with await cluster.nodes["n1"].connect() as json_client:
        await json_client.request({"type": "mv_write", "key": "json-mv", "value": {"a": [1]}})
        await json_client.request({"type": "mv_write", "key": "json-str", "value": "plain"})
        await json_client.request(
            {"type": "lww_write", "key": "json-lww", "value": 42, "timestamp": 3}
        )
    r3 = cluster.redis("n3")
    try:

        async def read() -> list:
            return [
                await r3.execute_command("MVREG", "GET", "json-mv"),
                await r3.execute_command("MVREG", "GET", "json-str"),
                await r3.execute_command("TREG", "GET", "json-lww"),
            ]

        seen = await eventually(read, lambda seen: all(seen), "the JSON writes at n3")
    finally:
        await r3.aclose()
    assert seen == [[b'{"a":[1]}'], [b"plain"], [b"42", 3]]


async def test_bad_commands_get_errors_and_the_connection_keeps_working(
    r1: aioredis.Redis,
) -> None:
    await r1.execute_command("TREG", "SET", "bad-t", "kept", 4)
    cases = [
        (("NOSUCH", "x"), "unknown command 'NOSUCH'"),
        (("MVREG", "SET", "bad-m"), "wrong number of arguments for 'mvreg|set' command"),
        (("MVREG", "GET"), "wrong number of arguments for 'mvreg|get' command"),
        (("MVREG", "FROB", "k"), "unknown subcommand 'FROB'"),
        (("TREG", "SET", "bad-t", "v"), "wrong number of arguments for 'treg|set' command"),
        (("TREG", "SET", "bad-t", "v", "soon"), "timestamp must be an integer"),
        (("TREG", "SET", "bad-t", "v", "-1"), "timestamp must be an integer"),
        (("TREG", "SET", "bad-t", "v", str(1 << 64)), "timestamp must be an integer"),
        (("MVREG",), "wrong number of arguments for 'mvreg' command"),
    ]
    for command, message in cases:
        with pytest.raises(ResponseError, match=message):
            await r1.execute_command(*command)
        assert await r1.ping() is True
    assert await r1.execute_command("MVREG", "GET", "bad-m") == []
    assert await r1.execute_command("TREG", "GET", "bad-t") == [b"kept", 4]


async def raw_reply(client: aioredis.Redis, *args: object) -> object:
    """The parsed reply, without redis-py's per-command conversions."""
    connection = await client.connection_pool.get_connection()
    try:
        await connection.send_command(*args)
        return await connection.read_response()
    finally:
        await client.connection_pool.release(connection)


async def test_client_habits(r1: aioredis.Redis) -> None:
    assert await r1.ping() is True
    assert await raw_reply(r1, "PING") == b"PONG"
    assert await r1.echo("hello") == b"hello"
    assert await raw_reply(r1, "SELECT", 0) == b"OK"
    with pytest.raises(ResponseError, match="DB index is out of range"):
        await r1.execute_command("SELECT", 1)
    assert await raw_reply(r1, "CLIENT", "SETINFO", "LIB-NAME", "x") == b"OK"
    assert await raw_reply(r1, "CLIENT", "SETNAME", "me") == b"OK"
    assert await raw_reply(r1, "CLIENT", "GETNAME") == b"me"
    assert await raw_reply(r1, "COMMAND", "COUNT") == 0
    assert await raw_reply(r1, "COMMAND", "DOCS") == []
    assert await raw_reply(r1, "COMMAND") == []
    hello = await raw_reply(r1, "HELLO", "2")
    assert isinstance(hello, list)
    info = dict(zip(hello[::2], hello[1::2], strict=True))
    assert info[b"proto"] == 2
    assert info[b"server"] == b"replica"
    with pytest.raises(ResponseError, match="NOPROTO"):
        await r1.execute_command("HELLO", "4")
    assert await r1.ping() is True


async def test_a_client_with_its_default_protocol_works_unchanged(cluster: RespCluster) -> None:
    """redis-py 8 says HELLO 3 on connect: RESP3 replies, a map from HELLO, `_` for null."""
    client = aioredis.Redis(host=LOOPBACK, port=cluster.resp_ports["n1"])
    try:
        assert await client.execute_command("MVREG", "SET", "default-proto", "v") == b"OK"
        assert await client.execute_command("MVREG", "GET", "default-proto") == [b"v"]
        assert await client.execute_command("TREG", "SET", "default-proto", "t", 5) == b"OK"
        assert await client.execute_command("TREG", "GET", "default-proto") == [b"t", 5]
        assert await client.client_getname() is None
        hello = await client.execute_command("HELLO", "3")
        assert isinstance(hello, dict) and hello[b"proto"] == 3
    finally:
        await client.aclose()


async def raw_exchange(port: int, data: bytes, *, until_closed: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


async def test_pipelined_commands_then_quit_closes(cluster: RespCluster) -> None:
    commands = [
        b"*4\r\n$5\r\nMVREG\r\n$3\r\nSET\r\n$4\r\npipe\r\n$1\r\nv\r\n",
        b"*3\r\n$5\r\nMVREG\r\n$3\r\nGET\r\n$4\r\npipe\r\n",
        b"*2\r\n$4\r\nping\r\n$2\r\nhi\r\n",
        b"*1\r\n$4\r\nQUIT\r\n",
        b"*1\r\n$4\r\nPING\r\n",  # after QUIT: never answered
    ]
    reply = await raw_exchange(cluster.resp_ports["n1"], b"".join(commands))
    assert reply == b"+OK\r\n*1\r\n$1\r\nv\r\n$2\r\nhi\r\n+OK\r\n"


async def test_a_request_that_is_not_an_array_of_bulk_strings_gets_an_error(
    cluster: RespCluster,
) -> None:
    shape_error = b"-ERR Protocol error: expected an array of bulk strings\r\n"
    commands = [
        b"*4\r\n$5\r\nMVREG\r\n$3\r\nSET\r\n$5\r\nshape\r\n:5\r\n",  # an integer
        b"*3\r\n$5\r\nMVREG\r\n$3\r\nSET\r\n*1\r\n$5\r\nshape\r\n",  # an array
        b"*4\r\n$5\r\nMVREG\r\n$3\r\nSET\r\n$5\r\nshape\r\n$-1\r\n",  # a null
        b"*0\r\n",  # nothing
        b"*3\r\n$5\r\nMVREG\r\n$3\r\nGET\r\n$5\r\nshape\r\n",
        b"*1\r\n$4\r\nQUIT\r\n",
    ]
    reply = await raw_exchange(cluster.resp_ports["n1"], b"".join(commands))
    assert reply == shape_error * 4 + b"*0\r\n+OK\r\n"


async def test_arguments_over_the_limit_together_are_refused_and_close(
    cluster: RespCluster,
) -> None:
    half = b"x" * (MAX_LINE_BYTES // 2 + 1)  # each under the limit, both over it
    command = b"*4\r\n$5\r\nMVREG\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(half),
        half,
        len(half),
        half,
    )
    reply = await raw_exchange(cluster.resp_ports["n1"], command)
    assert reply.startswith(b"-ERR request over max_line_bytes")


async def test_a_bulk_string_over_the_limit_is_refused_and_closes(cluster: RespCluster) -> None:
    big = b"x" * (MAX_LINE_BYTES + 1)
    command = b"*4\r\n$5\r\nMVREG\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n%s\r\n" % (len(big), big)
    reply = await raw_exchange(cluster.resp_ports["n1"], command)
    assert reply.startswith(b"-ERR request over max_line_bytes")
    r = cluster.redis("n1")
    try:
        assert await r.execute_command("MVREG", "GET", "big") == []
    finally:
        await r.aclose()


async def test_a_request_of_countless_small_elements_is_refused(cluster: RespCluster) -> None:
    element = b"$1\r\nx\r\n"
    first = MAX_LINE_BYTES // len(element)  # just under the limit
    then = 2 * HEADER_ALLOWANCE // len(element)  # past it, in one read
    reader, writer = await asyncio.open_connection(LOOPBACK, cluster.resp_ports["n1"])
    try:
        writer.write(b"*%d\r\n$5\r\nMVREG\r\n" % (first + then + 10) + element * first)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(element * then)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    assert reply.startswith(b"-ERR request over max_line_bytes")


async def test_concurrent_sets_across_a_partition_come_back_as_two_values() -> None:
    ids = ["n1", "n2"]
    links = [(a, b) for a in ids for b in ids if a != b]
    ports = free_listen_ports(2 * len(ids) + len(links))
    node_ports = dict(zip(ids, ports[:2], strict=True))
    resp_ports = dict(zip(ids, ports[2:4], strict=True))
    proxies = {
        link: LinkProxy(port, node_ports[link[1]])
        for link, port in zip(links, ports[4:], strict=True)
    }
    settings = {"gossip_interval_ms": 50}
    with tempfile.TemporaryDirectory(prefix="replica-resp-partition-") as name:
        directory = Path(name)
        running = ProxiedCluster(directory, ids, node_ports, proxies, settings)
        for node_id in ids:
            view = [
                (o, node_ports[o] if o == node_id else proxies[node_id, o].listen_port) for o in ids
            ]
            write_cluster_view(
                directory / f"{node_id}.toml",
                view,
                resp_ports={node_id: resp_ports[node_id]},
                **settings,
            )
        clients = {n: resp2_client(resp_ports[n]) for n in ids}
        try:
            await running.start()
            await running.partition([{"n1"}, {"n2"}])
            assert await clients["n1"].execute_command("MVREG", "SET", "split", "left") == b"OK"
            assert await clients["n2"].execute_command("MVREG", "SET", "split", "right") == b"OK"
            assert await clients["n1"].execute_command("MVREG", "GET", "split") == [b"left"]
            await running.heal_all()
            for node_id, client in clients.items():

                async def read(client: aioredis.Redis = client) -> list[bytes]:
                    return sorted(await client.execute_command("MVREG", "GET", "split"))

                await eventually(
                    read, lambda seen: seen == [b"left", b"right"], f"both values at {node_id}"
                )
        finally:
            for client in clients.values():
                await client.aclose()
            await running.close()
            print(running.logs())


def _config(nodes: str) -> dict:
    return tomllib.loads(nodes)


def test_config_reads_an_optional_resp_port() -> None:
    config = parse_cluster(
        _config(
            '[[nodes]]\nid = "a"\nhost = "h"\nport = 1\nresp_port = 2\n'
            '[[nodes]]\nid = "b"\nhost = "h"\nport = 3\n'
        )
    )
    assert [n.resp_port for n in config.nodes] == [2, None]
    assert config.nodes[0].resp_address == "h:2"


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ('[[nodes]]\nid = "a"\nhost = "h"\nport = 1\nresp_port = 0\n', "resp_port must be"),
        ('[[nodes]]\nid = "a"\nhost = "h"\nport = 1\nresp_port = "2"\n', "resp_port must be"),
        ('[[nodes]]\nid = "a"\nhost = "h"\nport = 1\nresp_port = 1\n', "must differ"),
        (
            '[[nodes]]\nid = "a"\nhost = "h"\nport = 1\nresp_port = 2\n'
            '[[nodes]]\nid = "b"\nhost = "h"\nport = 2\n',
            "both use h:2",
        ),
        (
            '[[nodes]]\nid = "a"\nhost = "h"\nport = 1\nresp_port = 3\n'
            '[[nodes]]\nid = "b"\nhost = "h"\nport = 2\nresp_port = 3\n',
            "both use h:3",
        ),
    ],
)
def test_config_rejects_bad_resp_ports(nodes: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_cluster(_config(nodes))


async def test_a_failing_command_is_an_error_and_the_node_keeps_serving(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node("n1", ["n1"])

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    def mvreg(args: list[bytes]) -> Request:
        return broken, {"type": "mv_write", "key": "k", "value": "v"}, ok

    # The command table, not the register: a compiled class's methods cannot be patched.
    monkeypatch.setitem(RESP_COMMANDS, b"MVREG", mvreg)
    server = await serve_resp(node, LOOPBACK, 0)
    client = resp2_client(server.addresses[0][1])
    try:
        with pytest.raises(ResponseError, match="internal error"):
            await client.execute_command("MVREG", "SET", "k", "v")
        assert "boom" in caplog.text
        assert await client.ping() is True
        pipe = client.pipeline(transaction=False)
        for i in range(100):
            pipe.execute_command("TREG", "SET", f"p{i}", "v", i)
            pipe.execute_command("TREG", "GET", f"p{i}")
        replies = await pipe.execute()
        assert replies[-1] == [b"v", 99]
        assert len(replies) == 200
    finally:
        await client.aclose()
        await server.close()
