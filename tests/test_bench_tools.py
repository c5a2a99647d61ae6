"""The benchmark's parts: statistics of alternating rounds, request mixes, pooled loads,
and the proxy process that tallies what crosses each peer link through the kit's
`LinkProxy` and its tap.

The benchmark lives in scripts/benchmarks, a package beside scripts/bench.py,
not in the installed project, so it is imported from its directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from replica.testing.ports import LOOPBACK, free_listen_ports
from replica.testing.proxy import Direction, LinkProxy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from benchmarks.load import LoadResult
from benchmarks.report import BenchError
from benchmarks.session import PROXY_SCRIPT, ProxyControl
from benchmarks.stats import (
    expected_distinct,
    least_plausible,
    paired_ratios,
    percentile,
)
from benchmarks.throughput import parse_depths
from benchmarks.workload import parse_mix, request_pool, value_for


def test_percentile_is_the_value_at_the_rank_and_nan_when_empty() -> None:
    ordered = [float(i) for i in range(100)]
    assert percentile(ordered, 0.5) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile(ordered, 1.0) == 99.0
    assert math.isnan(percentile([], 0.5))


def test_paired_ratios_set_round_i_against_round_i() -> None:
    top = {1: 10.0, 2: 30.0, 3: 8.0}
    bottom = {1: 20.0, 2: 30.0, 3: 4.0}
    ratios = paired_ratios(top, bottom)
    assert ratios.rounds == [1, 2, 3]
    assert ratios.per_round == [0.5, 1.0, 2.0]
    assert ratios.median == 1.0
    assert ratios.of_medians == 10.0 / 20.0
    assert (ratios.low, ratios.high) == (0.5, 2.0)
    assert "rounds 0.500 1.000 2.000" in ratios.text()


def test_paired_ratios_resist_one_slow_round_that_the_ratio_of_medians_does_not() -> None:
    # B is 10% faster in every round but one, where the machine slowed A's run down
    a = {i: 100.0 for i in range(1, 11)}
    b = {i: 110.0 for i in range(1, 11)}
    a[4] = 20.0
    assert paired_ratios(b, a).median == pytest.approx(1.1)


def test_paired_ratios_use_only_rounds_both_sides_ran_and_refuse_none() -> None:
    assert paired_ratios({1: 2.0, 2: 4.0}, {2: 2.0, 3: 1.0}).per_round == [2.0]
    assert paired_ratios({1: 1.0}, {1: 0.0}).per_round[0] > 1e6  # no division error
    with pytest.raises(ValueError):
        paired_ratios({1: 1.0}, {2: 1.0})


def test_least_plausible_lets_chance_pass_and_a_shortfall_fail() -> None:
    rng = random.Random(3)
    p, trials = 0.02, 1000
    bound = least_plausible(trials, p)
    draws = [sum(rng.random() < p for _ in range(trials)) for _ in range(200)]
    assert all(d >= bound for d in draws)
    assert least_plausible(trials, 0.865) > 0.8 * trials  # a node missing a fifth is caught


def test_expected_distinct_draws() -> None:
    assert expected_distinct(1, 100) == pytest.approx(1.0)
    assert expected_distinct(10**6, 100) == pytest.approx(100.0)
    assert expected_distinct(100_000, 100_000) == pytest.approx(100_000 * (1 - 1 / math.e), 1e-4)


def test_parse_mix_takes_weights_and_refuses_unknown_ops() -> None:
    assert parse_mix("mv_write:3,mv_read") == [("mv_write", 3), ("mv_read", 1)]
    for bad in ("nope", "mv_write:0", "mv_write:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_mix(bad)


def test_parse_depths_keeps_order_and_drops_repeats() -> None:
    assert parse_depths("16,1,16,4") == [16, 1, 4]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_depths("0,4")


def test_request_pool_is_the_same_every_run_and_numbers_its_lines() -> None:
    mix = parse_mix("mv_write,mv_read")
    pool = request_pool(mix, keys=50, lines=200, size=16)
    assert pool == request_pool(mix, keys=50, lines=200, size=16)
    assert all(line.endswith(b"\n") for line in pool)
    assert b'"msg_id":1}' in pool[0] and b'"msg_id":200}' in pool[-1]
    assert len(value_for("n1", 7, 1000)) == 1000


def _result(seconds: float, replies: int, cpu: float | None, errors: int = 0) -> LoadResult:
    latencies = [0.001 * i for i in range(replies)]
    first = {"type": "error"} if errors else None
    return LoadResult(seconds, replies, latencies, errors, first, cpu or 0.0, cpu, cpu)


def test_pooled_runs_add_up_and_weigh_cpu_by_seconds() -> None:
    pooled = LoadResult.pooled([_result(1.0, 10, 0.5), _result(3.0, 30, 1.0, errors=2)])
    assert (pooled.seconds, pooled.replies, pooled.errors) == (4.0, 40, 2)
    assert pooled.ops_per_s == 10.0
    assert pooled.node_cpu == pytest.approx((0.5 * 1 + 1.0 * 3) / 4)
    assert pooled.latencies == sorted(pooled.latencies) and len(pooled.latencies) == 40
    assert pooled.first_error == {"type": "error"}
    assert LoadResult.pooled([_result(1.0, 1, None), _result(1.0, 1, 1.0)]).node_cpu is None


def test_connections_side_by_side_combine_over_the_run_s_seconds() -> None:
    parts = [_result(2.0, 10, 0.4), _result(2.0, 30, 0.4)]
    whole = LoadResult.combined(parts, 2.0)
    assert whole.ops_per_s == 20.0
    assert whole.node_cpu == pytest.approx(0.4)


@contextlib.asynccontextmanager
async def answering_server() -> AsyncIterator[int]:
    """Answers every line with `{"type": "<its type>_ok"}`, as a node answers a peer."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while line := await reader.readline():
                writer.write(orjson.dumps({"type": orjson.loads(line)["type"] + "_ok"}) + b"\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, LOOPBACK, 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def peer_lines(count: int) -> list[bytes]:
    return [
        orjson.dumps({"type": "mv_merge" if i % 3 else "peer_hello", "pad": "x" * i}) + b"\n"
        for i in range(count)
    ]


async def test_the_link_proxy_tap_sees_every_byte_each_way_in_order_and_each_accept() -> None:
    seen: dict[Direction, bytearray] = {"sent": bytearray(), "replies": bytearray()}
    accepted: list[int] = []
    stream = b"".join(peer_lines(200))
    answers = bytearray()
    async with answering_server() as port:
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
                writer.write(stream)
                await writer.drain()
                for _ in range(200):
                    answers += await asyncio.wait_for(reader.readline(), 10)
                writer.close()
        finally:
            await proxy.close()
    assert bytes(seen["sent"]) == 2 * stream
    assert seen["replies"] == answers and answers.count(b"mv_merge_ok") == 2 * 133
    assert accepted == [0, 1] and proxy.connections_accepted == 2


async def test_the_proxy_process_tallies_each_way_by_type_and_cuts_and_heals_on_command() -> None:
    lines = peer_lines(300)
    stream = b"".join(lines)
    async with answering_server() as port:
        (listen_port,) = free_listen_ports(1)
        argv = [sys.executable, str(PROXY_SCRIPT), "--link", f"a>b:{listen_port}:{port}"]
        process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        control = ProxyControl(process)
        try:
            with pytest.raises(ConnectionRefusedError):  # links start cut
                await asyncio.open_connection(LOOPBACK, listen_port)
            await control.command("heal", ["a>b"])
            reader, writer = await asyncio.open_connection(LOOPBACK, listen_port)
            for start in range(0, len(stream), 777):  # lines split across reads
                writer.write(stream[start : start + 777])
                await writer.drain()
            replies = [await asyncio.wait_for(reader.readline(), 10) for _ in lines]
            stats = (await control.stats())["a>b"]

            merges = [line for line in lines if b"mv_merge" in line]
            assert stats["sent"]["mv_merge"][:2] == [len(merges), sum(map(len, merges))]
            assert stats["sent"]["peer_hello"][0] == len(lines) - len(merges)
            assert stats["replies"]["mv_merge_ok"][:2] == [
                len(merges),
                sum(len(r) for r in replies if b"mv_merge_ok" in r),
            ]
            assert len(stats["accepted"]) == 1

            await control.command("cut", ["a>b"])
            assert await asyncio.wait_for(reader.read(), 10) == b""  # the cut closed it
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection(LOOPBACK, listen_port)
            await control.reset()
            assert (await control.stats())["a>b"] == {"sent": {}, "replies": {}, "accepted": []}
            with pytest.raises(BenchError, match="KeyError"):
                await control.command("heal", ["nope"])
        finally:
            assert process.stdin is not None and process.stdout is not None
            process.stdin.close()  # end of stdin stops the proxy process
            try:
                assert process.wait(10) == 0
            finally:
                process.kill()
                process.stdout.close()
