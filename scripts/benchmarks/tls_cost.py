"""`tls`: what TLS costs a node: the same load over TLS and in plaintext, and a peer handshake.

Starts a plaintext node and, beside it, a node serving TLS (certificates
minted for it, `[tls]` in its file), and keeps C connections x P pre-encoded
requests of the op mix (mv_write by default) in flight against each in turn,
for `rounds` alternating rounds (10 by default), each while the other idles.
The figure is the median of the per-round ratios TLS / plaintext.  Target:
mv_write over TLS at least 0.7x plaintext, at 16 x 16.

Then it times a peer handshake against a two-node cluster serving TLS: a TLS
connection presenting one node's certificate, its `peer_hello` and the
`peer_hello_ok`, until closed; and the same over plaintext against a
two-node plaintext cluster, for scale.  Both are reported as median and p99
of `--handshakes` sequential handshakes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import statistics
import time
from typing import Any

import orjson

from replica.testing.ports import LOOPBACK

from .fill import preload
from .load import LoadResult, error_summary, timed_load
from .options import count_option, load_options, rounds_option, single_node_options
from .report import BenchError, Report, Target, row
from .rounds import alternate, paired
from .session import NodeHandle, Session, running
from .stats import DEFAULT_ROUNDS, percentile
from .workload import mix_text, request_pool

RATIO_LIMIT = 0.7  # mv_write over TLS against plaintext
POOL_MIN_LINES = 1 << 16
HANDSHAKE_TIMEOUT = 10.0


async def run(args: argparse.Namespace, s: Session) -> Report:
    """The alternating rounds, then the handshakes; plaintext is the session's own node."""
    rounds = args.rounds or DEFAULT_ROUNDS
    s.phase = "building the request pool"
    pool = request_pool(
        args.mix,
        args.keys,
        max(POOL_MIN_LINES, 4 * args.connections * args.in_flight),
        args.value_bytes,
    )
    async with contextlib.AsyncExitStack() as stack:
        s.phase = "starting the node serving TLS"
        beside = Session(
            s.directory, s.children, 1, s.gossip_ms, memory=args.memory, id_prefix="t", tls=True
        )
        await stack.enter_async_context(running(beside))
        servers = {"plaintext": s.first, "tls": beside.first}
        for name, node in servers.items():
            await preload(s, name, node, args.mix, args, args.in_flight)

        async def measure(name: str, server: NodeHandle, round_no: int) -> LoadResult:
            result = await timed_load(server, pool, args.connections, args.in_flight, args.seconds)
            s.check_alive(server)
            return result

        runs = await alternate(s, servers, rounds, measure)
    handshakes = {}
    for label, tls in (("tls", True), ("plaintext", False)):
        s.phase = f"timing {args.handshakes} peer handshakes ({label})"
        pair = Session(
            s.directory, s.children, 2, s.gossip_ms, memory=True, id_prefix=f"h{label[0]}", tls=tls
        )
        async with running(pair):
            handshakes[label] = await time_handshakes(pair, args.handshakes)
    ratio = paired(runs, "tls", "plaintext", lambda r: r.ops_per_s)
    at = f"{args.connections} x {args.in_flight}"
    summary = {
        name: statistics.median(r.result.ops_per_s for r in runs if r.server == name)
        for name in ("plaintext", "tls")
    }
    lines = [
        f"mix {mix_text(args.mix)}, {at}, {args.seconds:g} s per run, {rounds} rounds, "
        f"{'in memory' if args.memory else 'durable'}",
        row("plaintext ops/s (median of rounds)", f"{summary['plaintext']:,.0f}"),
        row("tls ops/s (median of rounds)", f"{summary['tls']:,.0f}"),
        row("tls / plaintext", f"{ratio.median:.3f}", ratio.text()),
    ]
    for label, times in handshakes.items():
        lines.append(
            row(
                f"peer handshake, {label} (connect + hello)",
                f"{times['median_ms']:.2f} ms",
                f"p99 {times['p99_ms']:.2f} ms over {times['count']}",
            )
        )
    report = Report(
        "tls",
        {
            "mix": mix_text(args.mix),
            "connections": args.connections,
            "in_flight": args.in_flight,
            "seconds": args.seconds,
            "rounds": rounds,
            "memory": args.memory,
        },
        {
            "ops_per_s": summary,
            "tls_over_plaintext": ratio.figures(),
            "handshake": handshakes,
        },
        lines,
        [
            Target(
                f"{mix_text(args.mix)} tls / plaintext at {at}",
                ratio.median,
                RATIO_LIMIT,
                "ratio",
                at_least=True,
            )
        ],
    )
    report.failure = error_summary([(f"{r.server}, round {r.round}", r.result) for r in runs])
    return report


async def time_handshakes(pair: Session, count: int) -> dict[str, Any]:
    """`count` sequential peer handshakes, the second node's id at the first node's real port."""
    first, second = pair.nodes.values()
    tls = None
    if first.tls_files:
        tls = ssl.create_default_context(cafile=second.tls_files["ca_file"])
        tls.load_cert_chain(second.tls_files["cert_file"], second.tls_files["key_file"])
    hello = orjson.dumps(
        {
            "src": second.id,
            "dest": first.id,
            "body": {"type": "peer_hello", "node_id": second.id, "node_ids": pair.ids, "msg_id": 1},
        }
    )
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                LOOPBACK, first.port, ssl=tls, server_hostname=None if tls is None else first.id
            )
            try:
                writer.write(hello + b"\n")
                answer = orjson.loads(await reader.readline())
            finally:
                writer.close()
        times.append((time.perf_counter() - started) * 1000)
        if answer.get("body", {}).get("type") != "peer_hello_ok":
            raise BenchError(f"{first.id} refused a peer handshake: {answer!r:.200}")
    times.sort()
    return {
        "count": count,
        "median_ms": statistics.median(times),
        "p99_ms": percentile(times, 0.99),
    }


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "tls",
        help="the same load over TLS and in plaintext, alternating; a peer handshake's time",
        description="Start a plaintext node and a node serving TLS, keep CONNECTIONS x "
        "IN_FLIGHT pre-encoded requests of the op mix in flight against each in turn for "
        "ROUNDS alternating rounds, and report the median of the per-round ratios TLS / "
        "plaintext (target: mv_write at least 0.7x). Then time HANDSHAKES peer handshakes "
        "(connect, peer_hello, peer_hello_ok) over TLS and over plaintext.",
    )
    load_options(parser, 3.0)
    parser.add_argument("--memory", action="store_true", help="both nodes run with --memory")
    rounds_option(parser, None, f"alternating rounds (default: {DEFAULT_ROUNDS})")
    count_option(parser, "--handshakes", 200, "peer handshakes timed per kind")
    single_node_options(parser, 1200.0)
    parser.set_defaults(run=run)
