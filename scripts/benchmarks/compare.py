"""`compare`: two variants of a node under the same load, in alternating rounds.

A variant is the code a node runs and how it starts: a label, a checkout
whose `replica` package it runs (`--a-src DIR`: DIR goes first on the node's
PYTHONPATH), extra environment variables and extra `replica serve` options.
Both nodes run side by side, each a session of its own (no peers), and take
the same load (op mix, connections x requests in flight, keys, value size,
durable or in memory): A, B, A, B, ... for R rounds (10 by default) of D
seconds, each node idle, checkpoints included, while the other is measured.
It reports every round's ops/s and p99 for both, the per-round ratios B/A
and their median: the way to tell whether a change made a build faster or
slower on a machine whose speed drifts by tens of percent within minutes.
Any error reply fails the run.  There is no target: it measures, B against A.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .fill import preload
from .load import LoadResult, error_summary, timed_load
from .options import load_options, rounds_option, run_options, value_bytes_option
from .report import Report, row
from .rounds import Round, alternate, paired
from .session import NodeHandle, Session, Variant, running
from .stats import DEFAULT_ROUNDS, PairedRatios
from .throughput import CLIENT_NOTE, POOL_MIN_LINES
from .workload import Mix, mix_text, request_pool

SIDES = ("a", "b")


def variant(args: argparse.Namespace, side: str) -> Variant:
    """Side `a` or `b` of the command line as a Variant."""
    src = getattr(args, f"{side}_src")
    return Variant(
        label=getattr(args, f"{side}_label") or side.upper(),
        src=Path(src).resolve() if src else None,
        env=dict(item.split("=", 1) for item in getattr(args, f"{side}_env")),
        serve_args=tuple(
            arg for text in getattr(args, f"{side}_serve") for arg in shlex.split(text)
        ),
    )


async def run(args: argparse.Namespace, s: Session) -> Report:
    """Start both variants, preload what the mix reads, then the alternating rounds."""
    mix: Mix = args.mix
    variants = [variant(args, side) for side in SIDES]
    s.phase = "finding the replica package each variant runs"
    code = {v.label: v.replica_file(s.directory) for v in variants}
    s.phase = "building the request pool"
    pool = request_pool(
        mix, args.keys, max(POOL_MIN_LINES, 4 * args.connections * args.in_flight), args.value_bytes
    )
    async with contextlib.AsyncExitStack() as stack:
        nodes: dict[str, NodeHandle] = {}
        for side, v in zip(SIDES, variants, strict=True):
            s.phase = f"starting {v.label}"
            session = Session(
                s.directory,
                s.children,
                1,
                s.gossip_ms,
                memory=args.memory,
                id_prefix=side,
                variant=v,
            )
            await stack.enter_async_context(running(session))
            nodes[v.label] = session.first
        preloads = {}
        for label, node in nodes.items():
            seconds = await preload(s, label, node, mix, args, args.in_flight)
            if seconds is not None:
                preloads[label] = seconds

        async def measure(label: str, node: NodeHandle, round_no: int) -> LoadResult:
            result = await timed_load(node, pool, args.connections, args.in_flight, args.seconds)
            s.check_alive(node)
            return result

        runs = await alternate(s, nodes, args.rounds, measure)
    return compare_report(args, variants, code, runs, preloads)


def compare_report(
    args: argparse.Namespace,
    variants: Sequence[Variant],
    code: dict[str, str],
    runs: Sequence[Round[LoadResult]],
    preloads: dict[str, float],
) -> Report:
    a, b = (v.label for v in variants)
    ops = paired(runs, b, a, lambda r: r.ops_per_s)
    p99 = paired(runs, b, a, lambda r: r.percentile_ms(0.99))
    storage = "in memory" if args.memory else "durable (data_dir in the temp dir)"
    lines = [
        f"compare: mix {mix_text(args.mix)}, {args.connections} connections x "
        f"{args.in_flight} in flight, {args.seconds:g} s per round, {args.keys} keys, "
        f"{args.value_bytes}-byte values, nodes {storage}; rounds alternate {a}, {b}, each "
        "node idle while the other is measured",
        *[
            f"  {side.upper()} = {v.label}: {code[v.label]}{_started(v)}"
            for side, v in zip(SIDES, variants, strict=True)
        ],
        f"note: {CLIENT_NOTE}",
        "",
        *round_lines(runs, a, b, ops, p99),
        *[row(f"preload ({label})", f"{seconds:.2f} s") for label, seconds in preloads.items()],
        "",
        row(f"{b} / {a} ops/s", f"{ops.median:.3f}", _spread(ops)),
        row(f"{b} / {a} p99", f"{p99.median:.3f}", _spread(p99)),
    ]
    figures: dict[str, Any] = {
        "runs": [{"variant": r.server, "round": r.round, **r.result.figures()} for r in runs],
        "ops_ratio": ops.figures(),
        "p99_ratio": p99.figures(),
        "preload_s": preloads,
    }
    params = {
        "variants": [
            {
                "label": v.label,
                "src": str(v.src) if v.src else None,
                "replica": code[v.label],
                "env": v.env,
                "serve_args": list(v.serve_args),
            }
            for v in variants
        ],
        "mix": mix_text(args.mix),
        "connections": args.connections,
        "in_flight": args.in_flight,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "memory": args.memory,
        "client_note": CLIENT_NOTE,
    }
    report = Report("compare", params, figures, lines, [])
    report.failure = error_summary([(f"{r.server}, round {r.round}", r.result) for r in runs])
    return report


def round_lines(
    runs: Sequence[Round[LoadResult]], a: str, b: str, ops: PairedRatios, p99: PairedRatios
) -> list[str]:
    """A table of the rounds: ops/s and p99 of each side, and B/A of both; medians last."""
    by = {(r.server, r.round): r.result for r in runs}
    width = max(12, len(a) + 7, len(b) + 7)
    lines = [
        f"  {'round':<7}{a + ' ops/s':>{width}}{'p99 ms':>9}{b + ' ops/s':>{width}}{'p99 ms':>9}"
        f"{'B/A ops':>10}{'B/A p99':>10}"
    ]
    for i, round_no in enumerate(ops.rounds):
        ra, rb = by[(a, round_no)], by[(b, round_no)]
        lines.append(
            f"  {round_no:<7}{ra.ops_per_s:>{width},.0f}{ra.percentile_ms(0.99):>9.2f}"
            f"{rb.ops_per_s:>{width},.0f}{rb.percentile_ms(0.99):>9.2f}"
            f"{ops.per_round[i]:>10.3f}{p99.per_round[i]:>10.3f}"
        )

    def median(label: str, of: str) -> float:
        results = [by[(label, n)] for n in ops.rounds]
        if of == "ops":
            return statistics.median(r.ops_per_s for r in results)
        return statistics.median(r.percentile_ms(0.99) for r in results)

    lines.append(
        f"  {'median':<7}{median(a, 'ops'):>{width},.0f}{median(a, 'p99'):>9.2f}"
        f"{median(b, 'ops'):>{width},.0f}{median(b, 'p99'):>9.2f}"
        f"{ops.median:>10.3f}{p99.median:>10.3f}"
    )
    return lines


def _spread(ratio: PairedRatios) -> str:
    return (
        f"median of the per-round ratios ({ratio.low:.3f} to {ratio.high:.3f}); "
        f"of the medians {ratio.of_medians:.3f}"
    )


def _started(v: Variant) -> str:
    extras = [f"{name}={value}" for name, value in v.env.items()]
    if v.serve_args:
        extras.append("serve " + shlex.join(v.serve_args))
    return f" ({'; '.join(extras)})" if extras else ""


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    compare = commands.add_parser(
        "compare",
        help="two variants of a node (code, environment, serve options), alternating rounds",
        description="Run variant A and variant B of a node side by side under the same load, "
        "A, B, A, B, ... for ROUNDS rounds of SECONDS, each idle while the other is measured; "
        "report every round's ops/s and p99 for both, B/A per round and the median of those "
        "ratios. Example: --a-label before --a-src /tmp/wt-before --b-label after --b-src .",
    )
    for side in SIDES:
        upper = side.upper()
        compare.add_argument(
            f"--{side}-label", metavar="NAME", help=f"variant {upper}'s name (default: {upper})"
        )
        compare.add_argument(
            f"--{side}-src",
            metavar="DIR",
            help=f"a checkout whose replica package variant {upper} runs (put first on its "
            "PYTHONPATH; default: the replica this Python imports)",
        )
        compare.add_argument(
            f"--{side}-env",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help=f"an environment variable for variant {upper}'s node (repeatable)",
        )
        compare.add_argument(
            f"--{side}-serve",
            action="append",
            default=[],
            metavar="'ARGS'",
            help=f"more `replica serve` options for variant {upper}, split as a shell would; "
            f"write it --{side}-serve='--opt value' (repeatable)",
        )
    load_options(compare, 3.0)
    compare.add_argument(
        "--memory", action="store_true", help="both nodes run with --memory (default: durable)"
    )
    rounds_option(compare, DEFAULT_ROUNDS, f"A then B, R times (default: {DEFAULT_ROUNDS})")
    value_bytes_option(compare)
    run_options(compare, 1200.0)
    compare.set_defaults(run=run, check=check, nodes=0, gossip_interval_ms=200)


def check(args: argparse.Namespace) -> str | None:
    """A usage error before anything starts, or None."""
    for side in SIDES:
        src = getattr(args, f"{side}_src")
        if src and not (Path(src) / "replica" / "__init__.py").is_file():
            return f"--{side}-src {src}: no replica/__init__.py there"
        for text in getattr(args, f"{side}_serve"):
            try:
                shlex.split(text)
            except ValueError as exc:
                return f"--{side}-serve {text!r}: {exc}"
        for item in getattr(args, f"{side}_env"):
            if "=" not in item or item.startswith("="):
                return f"--{side}-env {item!r}: give NAME=VALUE"
    labels = [args.a_label or "A", args.b_label or "B"]
    if labels[0] == labels[1]:
        return f"both variants are called {labels[0]!r}: give --a-label and --b-label apart"
    return None
