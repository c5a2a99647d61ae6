"""`throughput`: one node under C connections x P requests in flight, ops/s and latency.

Keeps C connections x P pre-encoded requests of an op mix (mv_write, mv_read,
kv_put, lww_write, mvcc_put, mvcc_get, with optional weights) in flight for D
seconds, and reports ops/s, p50/p99/p999 latency, error replies (any error
fails the run) and the CPU the client, the node and the rest of the machine
used (the client runs in the benchmark's own process, on the same CPUs).

Comparisons run alternating rounds (`rounds`; 10 by default) and read the
median of the per-round ratios (`stats`):

- `--both`: a durable and an in-memory node side by side, durable then in
  memory each round.  Target: durable mv_write at least 0.8x in memory.
- `--floor`: the floor (scripts/bench_floor.py, a bare uvloop + orjson server
  that parses each line and answers it) then the node, each round, under the
  same load.  Targets, for a durable node: mv_write at least 0.40x the floor,
  mv_read at least 0.50x, p99 at most 10 ms, no error replies.

`--depths 1,4,16,64` measures all of it at each depth of requests in flight
per connection (targets are judged at `--in-flight`, the load they are set
for), and `--chart FILE.png` draws the sweep (`chart`).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from .chart import PLOT_INSTALL, draw_chart
from .fill import preload
from .load import LoadResult, error_summary, timed_load
from .options import load_options, rounds_option, single_node_options
from .report import Report, Target, row
from .rounds import Round, alternate, paired
from .session import NodeHandle, Session, running
from .stats import DEFAULT_ROUNDS
from .workload import Mix, mix_text, request_pool

DURABLE_RATIO_LIMIT = 0.8  # durable mv_write against in memory
FLOOR_RATIO_LIMITS = {"mv_write": 0.40, "mv_read": 0.50}  # a durable node against the floor
P99_LIMIT_MS = 10.0  # a durable node's p99 under the load the floor ratios are set for
POOL_MIN_LINES = 1 << 16
CLIENT_NOTE = (
    "the client runs in this process and shares the machine's CPUs with the node "
    "(client and server CPU below, in cores; other: the machine's busy CPU outside both, "
    "which is other work skewing the figures, plus the kernel flushing a durable node's writes)"
)


@dataclass
class TimedRun:
    """One timed run: the node in one storage mode, or the floor."""

    server: str  # "durable", "memory" or "floor"
    depth: int  # requests in flight per connection
    round: int
    result: LoadResult


async def run(args: argparse.Namespace, s: Session) -> Report:
    """Preload what reads need on every node measured, then the timed rounds, alternating."""
    mix: Mix = args.mix
    depths: list[int] = args.depths or [args.in_flight]
    compared = args.floor or args.both
    rounds = args.rounds or (DEFAULT_ROUNDS if compared else 1)
    s.phase = "building the request pool"
    pool_lines = max(POOL_MIN_LINES, 4 * args.connections * max(depths))
    pool = request_pool(mix, args.keys, pool_lines, args.value_bytes)
    servers: dict[str, NodeHandle] = {}
    if args.floor:
        s.phase = "starting the floor"
        servers["floor"] = await s.start_floor()
    async with contextlib.AsyncExitStack() as stack:
        nodes = await throughput_nodes(args, s, stack)
        preloads = {}
        for mode, node in nodes.items():  # all before the first timed run
            seconds = await preload(s, mode, node, mix, args, max(depths))
            if seconds is not None:
                preloads[mode] = seconds
        servers.update(nodes)
        runs: list[TimedRun] = []
        for depth in depths:

            async def measure(
                name: str, server: NodeHandle, round_no: int, depth: int = depth
            ) -> LoadResult:
                result = await timed_load(server, pool, args.connections, depth, args.seconds)
                s.check_alive(server)
                return result

            for done in await alternate(s, servers, rounds, measure):
                runs.append(TimedRun(done.server, depth, done.round, done.result))
    report = throughput_report(args, mix, runs, preloads)
    if args.chart:
        s.phase = f"drawing {args.chart}"
        p = report.params
        title = (
            f"replica throughput: mix {p['mix']}, {p['connections']} connections, "
            f"{p['seconds']:g} s per run, {p['value_bytes']}-byte values"
        )
        draw_chart(Path(args.chart), report.figures["summary"], title)
        report.lines.append(f"chart: {args.chart}")
    return report


async def throughput_nodes(
    args: argparse.Namespace, s: Session, stack: contextlib.AsyncExitStack
) -> dict[str, NodeHandle]:
    """The node measured in each storage mode, by mode, in the order their rounds take turns.

    The session's own node is durable unless --memory.  --both starts an
    in-memory node beside it as a session of its own (node m1: its own port,
    directory and config, no peers), so the two never gossip and each sees
    only the load aimed at it; `stack` stops its clients and shows its log if
    the run fails.
    """
    if not args.both:
        return {"memory" if args.memory else "durable": s.first}
    s.phase = "starting the in-memory node beside the durable one"
    beside = Session(s.directory, s.children, 1, s.gossip_ms, memory=True, id_prefix="m")
    await stack.enter_async_context(running(beside))
    return {"durable": s.first, "memory": beside.first}


def throughput_summary(runs: Sequence[TimedRun]) -> list[dict[str, Any]]:
    """One entry per server and depth: best and median ops/s of its rounds, the rest pooled."""
    groups: dict[tuple[str, int], list[LoadResult]] = {}
    for timed in runs:
        groups.setdefault((timed.server, timed.depth), []).append(timed.result)
    return [
        {
            "server": server,
            "depth": depth,
            "rounds": len(results),
            "best_ops_per_s": max(r.ops_per_s for r in results),
            "median_ops_per_s": statistics.median(r.ops_per_s for r in results),
            **LoadResult.pooled(results).figures(),  # ops_per_s: over all rounds' seconds
        }
        for (server, depth), results in groups.items()
    ]


def throughput_ratios(runs: Sequence[TimedRun], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Node / floor per depth, or durable / in memory: round i against round i, and medians."""
    servers = {timed.server for timed in runs}
    pairs = [(mode, "floor") for mode in modes] if "floor" in servers else []
    if not pairs and {"durable", "memory"} <= servers:
        pairs = [("durable", "memory")]
    ratios = []
    for depth in dict.fromkeys(timed.depth for timed in runs):
        at_depth = [Round(t.server, t.round, t.result) for t in runs if t.depth == depth]
        for top, bottom in pairs:
            ratio = paired(at_depth, top, bottom, lambda r: r.ops_per_s)
            ratios.append({"of": f"{top} / {bottom}", "depth": depth, **ratio.figures()})
    return ratios


def throughput_targets(
    args: argparse.Namespace, mix: Mix, summary: list[dict[str, Any]], ratios: list[dict[str, Any]]
) -> list[Target]:
    """The targets, judged at the `--in-flight` depth, the load they are set for."""
    ops = [op for op, _ in mix]
    at = f"{args.connections} x {args.in_flight}"
    targets = []
    for ratio in ratios:
        if ratio["depth"] != args.in_flight:
            continue
        if ratio["of"] == "durable / memory" and ops == ["mv_write"]:
            targets.append(
                Target(
                    f"mv_write durable / in memory at {at}",
                    ratio["median"],
                    DURABLE_RATIO_LIMIT,
                    "ratio",
                    at_least=True,
                )
            )
        if ratio["of"] == "durable / floor" and len(ops) == 1 and ops[0] in FLOOR_RATIO_LIMITS:
            (node,) = [
                e for e in summary if (e["server"], e["depth"]) == ("durable", args.in_flight)
            ]
            targets += [
                Target(
                    f"durable {ops[0]} / floor at {at}",
                    ratio["median"],
                    FLOOR_RATIO_LIMITS[ops[0]],
                    "ratio",
                    at_least=True,
                ),
                Target(f"durable {ops[0]} p99 at {at}", node["p99_ms"], P99_LIMIT_MS, "ms"),
                Target(f"durable {ops[0]} error replies", node["errors"], 0, "replies"),
            ]
    return targets


def run_lines(runs: Sequence[TimedRun]) -> list[str]:
    """Every timed run: ops/s, latency, errors, and the CPU of client, server and the rest."""
    lines = [
        f"  {'run':<10}{'depth':>6}{'round':>6}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p999 ms':>9}{'errors':>8}{'client':>8}{'server':>8}{'other':>7}"
    ]
    for timed in runs:
        r = timed.result
        server_cpu = "-" if r.node_cpu is None else f"{r.node_cpu:.2f}"
        other_cpu = "-" if r.other_cpu is None else f"{r.other_cpu:.2f}"
        lines.append(
            f"  {timed.server:<10}{timed.depth:>6}{timed.round:>6}{r.ops_per_s:>10,.0f}"
            f"{r.percentile_ms(0.5):>9.2f}{r.percentile_ms(0.99):>9.2f}"
            f"{r.percentile_ms(0.999):>9.2f}{r.errors:>8}{r.client_cpu:>8.2f}{server_cpu:>8}"
            f"{other_cpu:>7}"
        )
    return lines


def summary_lines(summary: list[dict[str, Any]]) -> list[str]:
    return [
        f"  {'server':<10}{'depth':>6}{'rounds':>7}{'best ops/s':>12}{'median ops/s':>14}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'p999 ms':>9}  (latencies of all rounds)",
        *[
            f"  {e['server']:<10}{e['depth']:>6}{e['rounds']:>7}{e['best_ops_per_s']:>12,.0f}"
            f"{e['median_ops_per_s']:>14,.0f}{e['p50_ms']:>9.2f}{e['p99_ms']:>9.2f}"
            f"{e['p999_ms']:>9.2f}"
            for e in summary
        ],
    ]


def throughput_report(
    args: argparse.Namespace, mix: Mix, runs: list[TimedRun], preload: dict[str, float]
) -> Report:
    depths = list(dict.fromkeys(timed.depth for timed in runs))
    rounds = max(timed.round for timed in runs)
    modes = list(dict.fromkeys(timed.server for timed in runs if timed.server != "floor"))
    summary = throughput_summary(runs)
    ratios = throughput_ratios(runs, modes)
    floor = any(timed.server == "floor" for timed in runs)
    nodes = "one node"
    if len(modes) > 1:
        nodes = "a durable and an in-memory node side by side, their rounds alternating"
    lines = [
        f"throughput: mix {mix_text(mix)}, {args.connections} connections x "
        f"{','.join(map(str, depths))} in flight, {args.seconds:g} s per run, {args.keys} keys, "
        f"{args.value_bytes}-byte values, {nodes} (durable: data_dir in the temp dir, "
        "durability sync)"
        + (", alternating with the floor (scripts/bench_floor.py)" if floor else ""),
        f"note: {CLIENT_NOTE}",
        "",
        *run_lines(runs),
        *[row(f"preload ({mode})", f"{seconds:.2f} s") for mode, seconds in preload.items()],
    ]
    if rounds > 1:
        lines += ["", *summary_lines(summary)]
    if ratios:
        lines.append("")
    for ratio in ratios:
        lines.append(
            row(
                f"{ratio['of']} at {args.connections} x {ratio['depth']}",
                f"{ratio['median']:.3f}",
                f"median of the per-round ratios ({ratio['low']:.3f} to {ratio['high']:.3f}); "
                f"of the medians {ratio['of_medians']:.3f}",
            )
        )
        lines.append("    per round: " + " ".join(f"{x:.3f}" for x in ratio["per_round"]))
    figures: dict[str, Any] = {
        "runs": [
            {"server": t.server, "depth": t.depth, "round": t.round, **t.result.figures()}
            for t in runs
        ],
        "summary": summary,
        "ratios": ratios,
        "preload_s": preload,
    }
    params = {
        "mix": mix_text(mix),
        "connections": args.connections,
        "in_flight": args.in_flight,
        "depths": depths,
        "rounds": rounds,
        "seconds": args.seconds,
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "storage": modes,
        "floor": floor,
        "client_note": CLIENT_NOTE,
    }
    targets = throughput_targets(args, mix, summary, ratios)
    if floor and not targets:
        lines.append(
            f"  (the floor targets hold a durable node, a mix of only mv_write or mv_read, "
            f"at {args.connections} x {args.in_flight}: none applies to this run)"
        )
    report = Report("throughput", params, figures, lines, targets)
    report.failure = error_summary(
        [(f"{t.server} at depth {t.depth}, round {t.round}", t.result) for t in runs]
    )
    return report


def parse_depths(text: str) -> list[int]:
    """`1,4,16,64`: requests in flight per connection, in the order given, each once."""
    try:
        depths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if min(depths) < 1:
        raise argparse.ArgumentTypeError(f"a depth must be at least 1: {text!r}")
    return list(dict.fromkeys(depths))


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    throughput = commands.add_parser(
        "throughput",
        help="one node under C connections x P requests in flight: ops/s and latency",
        description="Start one node and keep CONNECTIONS x IN_FLIGHT pre-encoded requests "
        "of the op mix in flight for SECONDS; report ops/s, p50/p99/p999 latency and "
        "error replies (any error fails the run). --both runs a durable and an in-memory node "
        "side by side, alternates their timed rounds (each while the other node idles) and "
        "holds mv_write to durable >= 0.8x in memory. --floor "
        "runs the same load against a bare uvloop + orjson server too, alternately with "
        "the node, and reports node / floor, holding a durable node to mv_write >= 0.40x "
        "and mv_read >= 0.50x the floor, p99 <= 10 ms and no errors. Ratios are the "
        "median of the per-round ratios. --depths sweeps the requests in flight per "
        "connection (targets are judged at IN_FLIGHT only) and --chart draws the sweep. "
        "The client runs in the benchmark's own process, on the same CPUs as the node.",
    )
    load_options(throughput, 5.0)
    storage = throughput.add_mutually_exclusive_group()
    storage.add_argument(
        "--durable", action="store_true", help="the node keeps its data_dir (the default)"
    )
    storage.add_argument("--memory", action="store_true", help="the node runs with --memory")
    storage.add_argument(
        "--both",
        action="store_true",
        help="a durable and an in-memory node side by side, their rounds alternating",
    )
    throughput.add_argument(
        "--floor",
        action="store_true",
        help="also run the load against the floor, a bare uvloop + orjson server "
        "(scripts/bench_floor.py), floor and node alternately, and report node / floor",
    )
    rounds_option(
        throughput,
        None,
        f"timed runs per depth (default: {DEFAULT_ROUNDS} with --floor, each a floor run then "
        f"a node run, and with --both, each a durable run then an in-memory run; 1 otherwise)",
    )
    throughput.add_argument(
        "--depths",
        type=parse_depths,
        metavar="P,P,...",
        help="a sweep: measure at each of these requests in flight per connection, e.g. "
        "1,4,16,64, instead of at IN_FLIGHT alone (targets are judged at IN_FLIGHT)",
    )
    throughput.add_argument(
        "--chart",
        metavar="FILE.png",
        help="draw ops/s and p99 latency against the depth into FILE.png (needs matplotlib: "
        f"{PLOT_INSTALL})",
    )
    single_node_options(throughput, 1200.0)
    throughput.set_defaults(run=run, check=check)


def check(args: argparse.Namespace) -> str | None:
    """What the options cannot express: a usage error before anything starts, or None."""
    if args.floor and args.both:
        return "--floor compares one node with the floor: give --durable or --memory, not --both"
    if args.chart and find_spec("matplotlib") is None:
        return f"--chart needs matplotlib, which is not installed: {PLOT_INSTALL}"
    return None
