"""`resp`: MVREG SET on a node's RESP port against SET on redis-server, with redis-benchmark.

Starts one node with a `resp_port` (durable unless --memory) and a
`redis-server --appendonly yes --appendfsync always` in the temporary
directory, and runs `redis-benchmark -P 16 -r 100000` with
`MVREG SET r<R>:key:__rand_int__ v` against the node and
`SET r<R>:key:__rand_int__ v` against redis-server in alternating rounds
(R the round; 10 rounds by default), each server idle while the other is
measured.  After each node run a sample of the round's keys must read back
`[v]` with MVREG GET, and the node must hold about as many keys as the rounds
so far reach.  Each round has keys of its own because redis-benchmark seeds
its key generator with `time(NULL) ^ getpid()`: two runs a few seconds and a
few pids apart can draw the very same keys.  It needs redis-benchmark and
redis-server on PATH (Debian packages redis-tools and redis-server); without
them the run fails at once, naming them.

Target: the node at least 0.5x redis-server's requests/s (the median of the
per-round ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from replica.testing.ports import LOOPBACK, free_ports

from .clients import resp_commands, resp_ping
from .machine import process_cpu_seconds
from .options import count_option, rounds_option, run_options
from .processes import log_tail
from .report import BenchError, Report, Target, row
from .rounds import Round, alternate, paired
from .session import START_TIMEOUT, NodeHandle, Session
from .stats import DEFAULT_ROUNDS, expected_distinct, least_plausible

RESP_RATIO_LIMIT = 0.5  # MVREG SET against redis-server SET with appendfsync always
RESP_KEYSPACE = 100_000  # redis-benchmark -r: __rand_int__ is one of this many 12-digit numbers
RESP_SAMPLE = 1000
RESP_KEY_SHORTFALL = 0.97  # the node must hold at least this share of the expected keys
REDIS_TOOLS = {"redis-benchmark": "redis-tools", "redis-server": "redis-server"}


@dataclass
class BenchmarkRun:
    """One redis-benchmark run against one server: its CSV row, and the server's CPU."""

    figures: dict[str, float]
    cpu_cores: float | None

    @property
    def rps(self) -> float:
        return self.figures["rps"]


def redis_tools() -> dict[str, str]:
    """The paths of redis-benchmark and redis-server; a BenchError naming the packages if absent."""
    found = {name: shutil.which(name) for name in REDIS_TOOLS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        packages = " ".join(sorted({REDIS_TOOLS[name] for name in missing}))
        raise BenchError(
            f"{' and '.join(missing)} not found on PATH; resp needs redis-benchmark and "
            f"redis-server (on Debian: apt-get install {packages})"
        )
    return {name: path for name, path in found.items() if path is not None}


async def start_redis(s: Session, binary: str) -> NodeHandle:
    """A redis-server on a free loopback port that fsyncs its AOF on every write."""
    directory = s.directory / "redis-server"
    directory.mkdir()
    (port,) = free_ports(1)
    redis = NodeHandle("redis-server", port, directory)
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--appendonly", "yes"]
    argv += ["--appendfsync", "always", "--save", "", "--dir", str(directory)]
    argv += ["--daemonize", "no", "--logfile", ""]
    redis.other = process = s.children.spawn(argv, cwd=directory, log=redis.log)
    deadline = time.monotonic() + START_TIMEOUT
    while not await resp_ping(port):
        if process.poll() is not None:
            raise BenchError(
                f"redis-server exited with code {process.returncode}: "
                f"{log_tail(redis.log, 10, ' | ')}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server not answering PING after {START_TIMEOUT}s")
        await asyncio.sleep(0.02)
    return redis


def parse_benchmark_csv(text: str) -> dict[str, float]:
    """The figures of redis-benchmark --csv: a quoted header line, then one row per test."""
    rows = [
        [cell.strip('"') for cell in line.strip().split('","')]
        for line in text.splitlines()
        if line.startswith('"')
    ]
    if len(rows) < 2 or rows[0][:2] != ["test", "rps"]:
        raise BenchError(f"no CSV figures in redis-benchmark's output: {text[-300:]!r}")
    header, last = rows[0], rows[-1]
    try:
        return {name: float(value) for name, value in zip(header[1:], last[1:], strict=True)}
    except ValueError:
        raise BenchError(f"unreadable redis-benchmark CSV row: {last}") from None


async def redis_benchmark(
    s: Session,
    args: argparse.Namespace,
    binary: str,
    target: NodeHandle,
    command: Sequence[str],
    port: int | None = None,
) -> BenchmarkRun:
    """Run redis-benchmark against `target` (at `port`, or its own) to its end.

    Polled, so the deadline can cancel it.
    """
    assert target.process is not None
    server, pid, port = target.id, target.process.pid, port or target.port
    log = s.directory / f"redis-benchmark-{server}-{len(list(s.directory.glob('redis-b*')))}.log"
    argv = [binary, "-h", LOOPBACK, "-p", str(port), "-n", str(args.requests)]
    argv += ["-c", str(args.clients), "-P", str(args.pipeline), "-r", str(RESP_KEYSPACE)]
    argv += ["--csv", *command]
    cpu_before = process_cpu_seconds(pid)
    started = time.monotonic()
    process = s.children.spawn(argv, cwd=s.directory, log=log)
    while process.poll() is None:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    cpu_after = process_cpu_seconds(pid)
    output = log.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchError(
            f"redis-benchmark against {server} exited {process.returncode}: {output!r:.300}"
        )
    figures = parse_benchmark_csv(output)
    if "rps" not in figures or figures["rps"] <= 0:
        raise BenchError(f"redis-benchmark against {server} measured no requests: {output!r:.300}")
    cores = None
    if cpu_before is not None and cpu_after is not None and elapsed > 0:
        cores = (cpu_after - cpu_before) / elapsed
    return BenchmarkRun(figures, cores)


def resp_key_pattern(round_no: int) -> str:
    """Round `round_no`'s keys for redis-benchmark, a namespace of their own.

    redis-benchmark draws `__rand_int__` from `random()` seeded with
    `time(NULL) ^ getpid()`, so two runs whose second and pid differ in the
    same bits draw the same keys; in a shared namespace such a round would add
    no key and the check after it would fail.
    """
    return f"r{round_no}:key:__rand_int__"


async def check_resp_writes(
    s: Session, node: NodeHandle, round_no: int, requests: int
) -> list[str]:
    """Problems with what the benchmark wrote: sampled keys of round `round_no` must read back
    [v] over MVREG GET, and the node must hold about as many mv keys as `round_no` rounds of
    `requests` random SETs, each in its own namespace, reach."""
    assert node.resp_port is not None
    rng = random.Random(round_no)
    sample = rng.sample(range(RESP_KEYSPACE), RESP_SAMPLE)
    pattern = resp_key_pattern(round_no).encode()
    keys = [pattern.replace(b"__rand_int__", b"%012d" % i) for i in sample]
    replies = await resp_commands(node.resp_port, [[b"MVREG", b"GET", key] for key in keys])
    wrong = [
        f"{key.decode()}: {reply!r:.100}"
        for key, reply in zip(keys, replies, strict=True)
        if reply != [b"v"] and reply != []
    ]
    present = sum(reply == [b"v"] for reply in replies)
    stored = (await s.status())[node.id]["keys"]["mv"]
    per_round = expected_distinct(requests, RESP_KEYSPACE)
    expected = round_no * per_round
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} of {len(keys)} sampled keys read back wrong: {wrong[0]}")
    if present < least_plausible(len(keys), per_round / RESP_KEYSPACE):
        problems.append(
            f"round {round_no}: only {present} of {len(keys)} sampled keys are set; about "
            f"{per_round / RESP_KEYSPACE * len(keys):.0f} expected"
        )
    if not RESP_KEY_SHORTFALL * expected <= stored <= round_no * RESP_KEYSPACE:
        problems.append(
            f"after round {round_no} the node holds {stored} mv keys; about {expected:.0f} expected"
        )
    return problems


async def run(args: argparse.Namespace, s: Session) -> Report:
    """redis-benchmark against the node's RESP port and against redis-server, alternately."""
    tools = redis_tools()
    node = s.first
    assert node.resp_port is not None
    s.phase = "starting redis-server"
    redis = await start_redis(s, tools["redis-server"])
    if not await resp_ping(node.resp_port):
        raise BenchError(f"{node.id} does not answer PING on its resp_port {node.resp_port}")
    problems: list[str] = []

    async def measure(name: str, server: NodeHandle, round_no: int) -> BenchmarkRun:
        keys = resp_key_pattern(round_no)
        if name == "redis":
            return await redis_benchmark(
                s, args, tools["redis-benchmark"], redis, ["SET", keys, "v"]
            )
        assert node.resp_port is not None
        done = await redis_benchmark(
            s, args, tools["redis-benchmark"], node, ["MVREG", "SET", keys, "v"], node.resp_port
        )
        s.check_alive()
        s.phase = f"round {round_no}: reading back a sample of the keys"
        problems.extend(await check_resp_writes(s, node, round_no, args.requests))
        return done

    runs = await alternate(s, {"node": node, "redis": redis}, args.rounds, measure)
    durability = (await s.status())[node.id]["durability"]["mode"]
    report = resp_report(args, runs, durability)
    report.failure = "; ".join(problems)
    return report


def resp_report(
    args: argparse.Namespace, runs: Sequence[Round[BenchmarkRun]], durability: str
) -> Report:
    ratio = paired(runs, "node", "redis", lambda r: r.rps)
    node_rps = statistics.median(r.result.rps for r in runs if r.server == "node")
    redis_rps = statistics.median(r.result.rps for r in runs if r.server == "redis")
    mode = "in memory" if durability == "memory" else f"durable (durability {durability})"
    lines = [
        f"resp: redis-benchmark -n {args.requests} -c {args.clients} -P {args.pipeline} "
        f"-r {RESP_KEYSPACE}, alternately against one node {mode} (MVREG SET "
        f"r<round>:key:__rand_int__ v) and redis-server --appendonly yes --appendfsync always "
        f"(SET r<round>:key:__rand_int__ v); redis-benchmark shares the machine's CPUs with both",
        "",
        f"  {'round  server':<24}{'requests/s':>12}{'avg ms':>9}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU':>7}",
    ]
    for done in runs:
        f = done.result.figures

        def ms(name: str, f: dict[str, float] = f) -> str:
            return f"{f[name]:.3f}" if name in f else "-"

        cpu = f"{done.result.cpu_cores:.2f}" if done.result.cpu_cores is not None else "-"
        lines.append(
            f"  {done.round:<7}{done.server:<17}{done.result.rps:>12,.0f}{ms('avg_latency_ms'):>9}"
            f"{ms('p50_latency_ms'):>9}{ms('p95_latency_ms'):>9}{ms('p99_latency_ms'):>9}"
            f"{ms('max_latency_ms'):>9}{cpu:>7}"
        )
    lines += [
        "",
        row("node requests/s (median of rounds)", f"{node_rps:,.0f}"),
        row("redis-server requests/s (median of rounds)", f"{redis_rps:,.0f}"),
        row("node / redis-server", ratio.text()),
    ]
    figures: dict[str, Any] = {
        "runs": [
            {
                "round": done.round,
                "server": done.server,
                **done.result.figures,
                "server_cpu_cores": done.result.cpu_cores,
            }
            for done in runs
        ],
        "node_rps": node_rps,
        "redis_rps": redis_rps,
        "ratio": ratio.figures(),
    }
    params = {
        "requests": args.requests,
        "clients": args.clients,
        "pipeline": args.pipeline,
        "keyspace": RESP_KEYSPACE,
        "rounds": args.rounds,
        "durability": durability,
    }
    targets = [
        Target(
            f"node MVREG SET / redis SET at pipeline {args.pipeline}",
            ratio.median,
            RESP_RATIO_LIMIT,
            "x",
            at_least=True,
        )
    ]
    return Report("resp", params, figures, lines, targets)


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    resp = commands.add_parser(
        "resp",
        help="redis-benchmark: MVREG SET on a node's RESP port against SET on redis-server",
        description="Start one node with a resp_port and a redis-server with appendfsync "
        "always, run redis-benchmark with MVREG SET r<R>:key:__rand_int__ v against the node "
        "and SET r<R>:key:__rand_int__ v against redis-server, alternately (R the round), "
        "and hold the node to at least 0.5x redis-server's requests/s (the median of the "
        "per-round ratios). Needs redis-benchmark and redis-server on PATH (Debian: "
        "redis-tools, redis-server).",
    )
    count_option(resp, "--requests", 200_000, "requests per redis-benchmark run")
    count_option(resp, "--clients", 16, "redis-benchmark's connections", "C")
    count_option(resp, "--pipeline", 16, "requests pipelined per client", "P")
    rounds_option(
        resp, DEFAULT_ROUNDS, f"node then redis-server, R times (default: {DEFAULT_ROUNDS})"
    )
    resp.add_argument(
        "--memory", action="store_true", help="the node runs with --memory (default: durable)"
    )
    run_options(resp, 900.0)
    resp.set_defaults(run=run, nodes=1, gossip_interval_ms=200, resp=True)
