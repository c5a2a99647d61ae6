"""Link faults of the testing kit on real TCP and real processes: latency, bandwidth, resets,
partition shapes and the nemesis.

The proxy's own bounds are measured between two sockets through one
`LinkProxy` (an echo server or a sink behind it); the cluster tests show what
a user of `replica.testing` sees.  Only lower bounds on time are asserted.
Every cluster is opened through `checked_cluster`, which records each node's
process and helpers before the cluster closes and fails if any is alive after.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from replica.testing import LOOPBACK, ProxiedCluster, cluster, eventually, free_listen_ports
from replica.testing.nemesis import Nemesis
from replica.testing.proxy import LinkProxy
from replica.testing.shapes import Link

ABSENCE_WINDOW_S = 1.0  # twenty 50 ms gossip ticks: what could go through would have arrived
READ_CHUNK = 1 << 16


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextlib.asynccontextmanager
async def checked_cluster(n: int, **options: Any) -> AsyncIterator[ProxiedCluster]:
    """`cluster(n)`, then: no node and no helper it had just before closing is still alive."""
    pids: set[int] = set()
    try:
        async with cluster(n, **options) as running:
            try:
                yield running
            finally:
                for node in running.nodes.values():
                    if node.process is not None:
                        pids.add(node.process.pid)
                    pids.update(node.helper_pids())
    finally:
        left = sorted(pid for pid in pids if alive(pid))
        assert not left, f"processes left after the cluster closed: {left}"


# -- one proxy between two sockets -------------------------------------------------------


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(READ_CHUNK):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def proxy_to(target_port: int) -> AsyncIterator[LinkProxy]:
    (listen_port,) = free_listen_ports(1)
    proxy = LinkProxy(listen_port, target_port, rng=random.Random(7))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@contextlib.asynccontextmanager
async def echo_through_proxy() -> AsyncIterator[
    tuple[LinkProxy, asyncio.StreamReader, asyncio.StreamWriter]
]:
    async with echo_server() as port, proxy_to(port) as proxy:
        reader, writer = await asyncio.open_connection(LOOPBACK, proxy.listen_port)
        try:
            yield proxy, reader, writer
        finally:
            writer.close()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    started = time.monotonic()
    writer.write(b"ping\n")
    await writer.drain()
    assert await reader.readline() == b"ping\n"
    return time.monotonic() - started


async def test_latency_delays_each_direction_of_a_live_connection_by_at_least_the_delay() -> None:
    async with echo_through_proxy() as (proxy, reader, writer):
        await round_trip(reader, writer)  # the connection is live before the latency is set
        proxy.set_latency(150)
        assert proxy.state() == {
            "cut": False,
            "latency_ms": 150.0,
            "jitter_ms": 0.0,
            "bandwidth": None,
            "connections": 1,
        }
        assert await round_trip(reader, writer) >= 2 * 0.150  # there and back, each delayed
        proxy.set_latency(0)
        assert proxy.state()["latency_ms"] == 0
        await round_trip(reader, writer)
        with pytest.raises(ValueError):
            proxy.set_latency(-1)


async def test_jitter_never_reorders_bytes_and_loses_none() -> None:
    async with echo_through_proxy() as (proxy, reader, writer):
        proxy.set_latency(20, jitter_ms=20)
        count = 300
        for index in range(count):
            writer.write(b"%d\n" % index)
            await writer.drain()
            if index % 10 == 0:
                await asyncio.sleep(0.002)  # so the proxy reads many separate chunks
        lines = [await reader.readline() for _ in range(count)]
        assert lines == [b"%d\n" % index for index in range(count)]


async def test_a_bandwidth_cap_makes_n_bytes_take_at_least_n_over_the_cap() -> None:
    total, cap = 120_000, 200_000
    arrived: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received = 0
        while received < total and (data := await reader.read(READ_CHUNK)):
            received += len(data)
        arrived.set_result(time.monotonic())
        writer.close()

    server = await asyncio.start_server(sink, LOOPBACK, 0)
    try:
        async with proxy_to(server.sockets[0].getsockname()[1]) as proxy:
            proxy.set_bandwidth(cap)
            assert proxy.state()["bandwidth"] == cap
            _, writer = await asyncio.open_connection(LOOPBACK, proxy.listen_port)
            started = time.monotonic()
            writer.write(b"x" * total)
            await writer.drain()
            assert await asyncio.wait_for(arrived, 30) - started >= total / cap
            writer.close()
            proxy.set_bandwidth(None)
            with pytest.raises(ValueError):
                proxy.set_bandwidth(0)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_reset_aborts_live_connections_with_rst_and_keeps_listening() -> None:
    async with echo_through_proxy() as (proxy, reader, writer):
        await round_trip(reader, writer)
        assert proxy.state()["connections"] == 1
        await proxy.reset()
        with pytest.raises(ConnectionResetError):
            await reader.read(READ_CHUNK)
        assert proxy.state()["connections"] == 0 and not proxy.is_cut
        again_reader, again = await asyncio.open_connection(LOOPBACK, proxy.listen_port)
        try:
            await round_trip(again_reader, again)
        finally:
            again.close()
        assert proxy.connections_accepted == 2


# -- clusters ----------------------------------------------------------------------------


async def mv_values(running: ProxiedCluster, node: str, key: str) -> list[Any]:
    client = await running.client(node)
    return sorted(entry["value"] for entry in (await client.mv_read(key))["values"])


async def test_replication_over_a_slow_link_arrives_no_sooner_than_the_delay() -> None:
    delay_ms = 400
    async with checked_cluster(2, memory=True) as running:
        await running.wait_quiet()
        await running.latency("n1", "n2", delay_ms)
        state = running.link_state()
        assert [state[link]["latency_ms"] for link in [("n1", "n2"), ("n2", "n1")]] == [400, 400]
        started = time.monotonic()
        await (await running.client("n1")).mv_write("k", "late")
        await eventually(lambda: mv_values(running, "n2", "k"), lambda seen: seen == ["late"])
        assert time.monotonic() - started >= delay_ms / 1000
        await running.latency("n1", "n2", 0)
        await (await running.client("n2")).mv_write("k2", "prompt")
        await running.converged(reads=[{"type": "mv_read", "key": "k2"}])
        with pytest.raises(ValueError, match="itself"):
            await running.latency("n1", "n1", 10)


async def test_reset_connections_makes_the_nodes_redial_and_converge() -> None:
    async with checked_cluster(3) as running:
        await running.wait_quiet()

        def accepted() -> dict[Link, int]:
            return {link: proxy.connections_accepted for link, proxy in running.proxies.items()}

        before = accepted()
        await running.reset_connections("n1", "n2")
        pair = {("n1", "n2"), ("n2", "n1")}

        async def redialled() -> dict[Link, int]:
            return accepted()

        await eventually(
            redialled,
            lambda now: all(now[link] > before[link] for link in pair),
            "n1 and n2 dial each other again",
        )
        assert {link: n for link, n in accepted().items() if link not in pair} == {
            link: n for link, n in before.items() if link not in pair
        }
        await running.wait_quiet("every peer connected again")
        before = accepted()
        await running.reset_connections()
        await eventually(
            redialled, lambda now: all(now[link] > before[link] for link in now), "every redial"
        )
        await (await running.client("n3")).mv_write("k", "after-resets")
        await running.converged(reads=[{"type": "mv_read", "key": "k"}])
        assert await mv_values(running, "n1", "k") == ["after-resets"]


def reachable(nodes: list[str], cut: frozenset[Link], source: str) -> set[str]:
    """The nodes `source`'s writes can reach over the links left, relayed by other nodes."""
    seen, frontier = {source}, [source]
    while frontier:
        node = frontier.pop()
        for other in nodes:
            if other not in seen and (node, other) not in cut:
                seen.add(other)
                frontier.append(other)
    return seen


async def writers_seen(running: ProxiedCluster, prefix: str) -> dict[str, list[str]]:
    """For each node, whose write of `<prefix>-<writer>` (valued the writer's id) it holds."""
    seen = {}
    for reader in running.node_ids:
        values = []
        for writer in running.node_ids:
            values += await mv_values(running, reader, f"{prefix}-{writer}")
        seen[reader] = sorted(values)
    return seen


async def apply_shape_and_check_reach(running: ProxiedCluster, name: str, seed: int) -> None:
    nodes = running.node_ids
    applied = await running.shape(name, rng=random.Random(seed))
    assert running.cut_links == set(applied.links), str(applied)
    assert applied.links, str(applied)  # each of these shapes cuts something of 3+ nodes
    for node in nodes:
        await (await running.client(node)).mv_write(f"{name}-{node}", node)
    expected = {
        reader: sorted(w for w in nodes if reader in reachable(nodes, applied.links, w))
        for reader in nodes
    }
    deadline = time.monotonic() + ABSENCE_WINDOW_S
    await eventually(
        lambda: writers_seen(running, name), lambda seen: seen == expected, str(applied)
    )
    while time.monotonic() < deadline:  # and nothing unreachable shows up meanwhile
        assert await writers_seen(running, name) == expected, str(applied)
        await asyncio.sleep(0.05)
    await running.heal()
    assert running.cut_links == set()
    await running.converged(reads=[{"type": "mv_read", "key": f"{name}-{w}"} for w in nodes])
    assert await writers_seen(running, name) == dict.fromkeys(nodes, nodes)


async def test_shapes_cut_exactly_their_links_and_only_the_unreachable_miss_writes() -> None:
    async with checked_cluster(3, memory=True) as running:
        for seed, name in enumerate(["halves", "majorities_ring", "bridge"]):
            await apply_shape_and_check_reach(running, name, seed)


async def test_shapes_over_five_nodes_reach_as_far_as_the_links_left() -> None:
    async with checked_cluster(5, memory=True) as running:
        for seed, name in enumerate(["halves", "majorities_ring"]):
            await apply_shape_and_check_reach(running, name, seed)


async def test_a_nemesis_prints_its_seed_replays_it_and_leaves_the_cluster_healed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with checked_cluster(3, memory=True) as running:
        written: list[str] = []
        async with Nemesis(running, interval=0.25, duration=2.0, latency_ms=30) as nemesis:
            started = time.monotonic()
            while time.monotonic() - started < 2.2:
                key = f"k{len(written)}"
                await (await running.client(running.node_ids[len(written) % 3])).mv_write(key, 1)
                written.append(key)
                await asyncio.sleep(0.02)
        printed = re.search(r"nemesis seed (\d+): replay with seed=(\d+)", capsys.readouterr().out)
        assert printed and printed[1] == printed[2] == str(nemesis.seed)
        replay = Nemesis(running, interval=0.25, duration=2.0, latency_ms=30, seed=int(printed[1]))
        assert replay.schedule() == nemesis.schedule()
        actions = [step.action for step in nemesis.schedule()]
        taken = [entry.split(" ", 1)[1] for entry in nemesis.log]
        assert taken and taken == actions[: len(taken)], nemesis.text()
        assert running.cut_links == set(), nemesis.text()
        assert all(s["latency_ms"] == 0 for s in running.link_state().values()), nemesis.text()
        await running.converged(timeout=30)
        for node in running.node_ids:
            for key in written:
                assert await mv_values(running, node, key) == [1], (node, key, nemesis.text())


async def test_a_body_that_raises_inside_a_nemesis_and_a_cluster_leaves_no_process() -> None:
    with pytest.raises(RuntimeError, match="the cluster body failed"):
        async with checked_cluster(2) as running:

            async def cut() -> set[Link]:
                return running.cut_links

            with pytest.raises(RuntimeError, match="the nemesis body failed"):
                async with Nemesis(running, shapes=("one_way",), interval=0.2, duration=5.0):
                    await eventually(cut, bool, "the nemesis cuts a link")
                    raise RuntimeError("the nemesis body failed")
            assert running.cut_links == set()
            raise RuntimeError("the cluster body failed")
