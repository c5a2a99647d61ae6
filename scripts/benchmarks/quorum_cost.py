"""`quorum`: what waiting for a write quorum costs: `w: "quorum"` against `w: 1`.

Starts a cluster (3 nodes by default, durable unless `--memory`) and keeps C
connections x P pre-encoded `mv_write` requests in flight against its first
node, for `rounds` alternating rounds (10 by default): one run whose
requests carry `"w": "quorum"`, one whose requests carry none (the cluster's
`w = 1`), the same keys and values in both.  Before each run every node must
be idle, so gossip the previous run left behind never counts against the
next.  The figure is the median of the per-round ratios quorum / `w: 1` of
throughput; p50 and p99 latency are reported for both.  Target: quorum
writes at least 0.5x the throughput of `w: 1`.
"""

from __future__ import annotations

import argparse
import statistics

import orjson

from .load import LoadResult, error_summary, timed_load
from .machine import tree_cpu_seconds
from .options import load_options, rounds_option
from .report import Report, Target, row
from .rounds import Round, paired
from .session import Session, wait_idle
from .stats import DEFAULT_ROUNDS
from .workload import request_pool

RATIO_LIMIT = 0.5  # w: "quorum" against w: 1
POOL_MIN_LINES = 1 << 16
SETTLE_TIMEOUT = 10.0
KINDS = {"quorum": b',"w":"quorum"}\n', "w1": b"}\n"}
"""How each run's requests end: with `"w": "quorum"`, or as they are."""


def with_quorum(pool: list[bytes], ending: bytes) -> list[bytes]:
    """The pool's requests, each object closed by `ending` (a field added, or nothing)."""
    return [line.rstrip(b"\n")[:-1] + ending for line in pool]


async def run(args: argparse.Namespace, s: Session) -> Report:
    rounds = args.rounds or DEFAULT_ROUNDS
    s.phase = "building the request pools"
    base = request_pool(
        [("mv_write", 1)],
        args.keys,
        max(POOL_MIN_LINES, 4 * args.connections * args.in_flight),
        args.value_bytes,
    )
    pools = {kind: with_quorum(base, ending) for kind, ending in KINDS.items()}
    assert orjson.loads(pools["quorum"][0])["w"] == "quorum"
    target = s.first
    runs: list[Round[LoadResult]] = []
    for round_no in range(1, rounds + 1):
        for kind, pool in pools.items():
            for node in s.nodes.values():
                s.phase = f"waiting for {node.id} to be idle"
                await wait_idle(s, node, SETTLE_TIMEOUT, tree_cpu_seconds)
            s.phase = f"measuring {kind}, round {round_no} of {rounds}"
            result = await timed_load(target, pool, args.connections, args.in_flight, args.seconds)
            for node in s.nodes.values():
                s.check_alive(node)
            runs.append(Round(kind, round_no, result))
    ratio = paired(runs, "quorum", "w1", lambda r: r.ops_per_s)
    at = f"{args.connections} x {args.in_flight}"

    def median(kind: str, figure: str) -> float:
        values = [r.result.figures()[figure] for r in runs if r.server == kind]
        return float(statistics.median(values))

    figures = {
        kind: {f: median(kind, f) for f in ("ops_per_s", "p50_ms", "p99_ms")} for kind in KINDS
    }
    lines = [
        f"mv_write at {target.id} of {len(s.nodes)} nodes, {at}, {args.seconds:g} s per run, "
        f"{rounds} rounds, {'in memory' if args.memory else 'durable'}",
    ]
    for kind, label in (("w1", "w: 1"), ("quorum", 'w: "quorum"')):
        f = figures[kind]
        lines.append(
            row(
                f"{label} ops/s (median of rounds)",
                f"{f['ops_per_s']:,.0f}",
                f"p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms",
            )
        )
    lines.append(row('w: "quorum" / w: 1', f"{ratio.median:.3f}", ratio.text()))
    report = Report(
        "quorum",
        {
            "nodes": len(s.nodes),
            "connections": args.connections,
            "in_flight": args.in_flight,
            "seconds": args.seconds,
            "rounds": rounds,
            "memory": args.memory,
        },
        {"runs": figures, "quorum_over_w1": ratio.figures()},
        lines,
        [
            Target(
                f'mv_write w: "quorum" / w: 1 at {at}',
                ratio.median,
                RATIO_LIMIT,
                "ratio",
                at_least=True,
            )
        ],
    )
    report.failure = error_summary([(f"{r.server}, round {r.round}", r.result) for r in runs])
    return report


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "quorum",
        help='mv_write at w: "quorum" against w: 1 on a cluster, alternating',
        description="Start a cluster and keep CONNECTIONS x IN_FLIGHT pre-encoded mv_write "
        'requests in flight against its first node, alternating runs at w: "quorum" and at '
        "w: 1 for ROUNDS rounds; report throughput, p50 and p99 of both and the median of "
        "the per-round ratios (target: quorum at least 0.5x).",
    )
    load_options(parser, 3.0)
    parser.add_argument("--nodes", type=int, default=3, help="cluster size (default: 3)")
    parser.add_argument("--memory", action="store_true", help="nodes run with --memory")
    parser.add_argument(
        "--gossip-interval-ms", type=int, default=200, help="the nodes' gossip interval"
    )
    rounds_option(parser, None, f"alternating rounds (default: {DEFAULT_ROUNDS})")
    parser.add_argument("--value-bytes", type=int, default=16, help="length of each value")
    parser.add_argument("--timeout", type=float, default=1200.0, help="the whole run's deadline")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)
