"""Filling a node with N keys, and checking afterwards what it holds.

`restart` and `memory` write N mv keys and then read a random sample back;
`throughput` and `compare` write every key their mix's reads need.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from typing import Any

from .clients import READ_CONNECTIONS, READ_WINDOW, spread
from .load import LoadResult, drive
from .options import count_option
from .report import BenchError, row
from .session import NodeHandle, Session
from .workload import Mix, fill_lines, key_name, preload_ops, split_range, value_for


async def fill(
    node: NodeHandle, op: str, keys: int, size: int, connections: int, window: int
) -> LoadResult:
    """Write every key once with `op` (value: `value_for("n1", i)`), pipelined; no errors."""
    sources = [fill_lines(op, part, size) for part in split_range(keys, connections)]
    result = await drive(node, sources, window, None)
    if result.errors:
        raise BenchError(f"{result.errors} of {keys} {op} writes failed: {result.first_error}")
    if result.replies != keys:
        raise BenchError(f"{result.replies} replies to {keys} {op} writes")
    return result


async def preload(
    s: Session, label: str, node: NodeHandle, mix: Mix, args: argparse.Namespace, window: int
) -> float | None:
    """Write every key the mix's reads need; the seconds it took, None if there was none."""
    ops = preload_ops(mix)
    if not ops:
        return None
    started = time.monotonic()
    for op in ops:
        s.phase = f"preloading {args.keys} keys with {op} ({label})"
        await fill(node, op, args.keys, args.value_bytes, args.connections, window)
    return time.monotonic() - started


async def sample_mismatches(
    s: Session, node_id: str, sample: Sequence[int], size: int
) -> list[str]:
    """The sampled keys whose mv_read is not exactly the one value written."""
    bodies = [{"type": "mv_read", "key": key_name(i)} for i in sample]
    replies = await spread(await s.connections(node_id, READ_CONNECTIONS), bodies, READ_WINDOW)
    wrong = []
    for i, reply in zip(sample, replies, strict=True):
        values = reply.get("values") if reply.get("type") == "mv_read_ok" else None
        if not values or [v.get("value") for v in values] != [value_for(node_id, i, size)]:
            wrong.append(f"{key_name(i)}: {reply!r:.200}")
    return wrong


def fill_sample(args: argparse.Namespace) -> list[int]:
    """The keys (by index) read back after a fill: `--sample` of them, the same every run."""
    return random.Random(7).sample(range(args.keys), min(args.sample, args.keys))


async def check_filled(
    s: Session, args: argparse.Namespace, sample: Sequence[int]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Read `sample` of the keys `fill` wrote back, and count the keys by status.

    Returns figures, report lines, and the problems found (a wrong value, a
    key count other than `args.keys`).
    """
    node_id = s.ids[0]
    wrong = await sample_mismatches(s, node_id, sample, args.value_bytes)
    stored = (await s.status())[node_id]["keys"]["mv"]
    figures = {"sample": len(sample), "sample_wrong": len(wrong), "mv_keys": stored}
    lines = [
        row("sampled keys read back", f"{len(sample) - len(wrong)}/{len(sample)}"),
        row("mv keys (status)", f"{stored:,}"),
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} of {len(sample)} sampled keys read back wrong: {wrong[0]}")
    if stored != args.keys:
        problems.append(f"the node holds {stored} mv keys, not {args.keys}")
    return figures, lines, problems


def writes_row(load: LoadResult, args: argparse.Namespace) -> str:
    return row(
        "writes",
        f"{load.seconds:.2f} s",
        f"{load.ops_per_s:,.0f} writes/s, {args.connections} conns x {args.window} in flight",
    )


def fill_params(args: argparse.Namespace) -> dict[str, Any]:
    names = ("keys", "value_bytes", "connections", "window", "sample")
    return {name: getattr(args, name) for name in names}


def add_fill_options(parser: argparse.ArgumentParser, sample_help: str) -> None:
    """What a scenario that writes N keys and reads a sample back shares."""
    count_option(parser, "--keys", 1_000_000, "mv keys written", "KEYS")
    count_option(parser, "--connections", 8, "client connections writing the keys")
    count_option(parser, "--window", 64, "writes in flight per connection")
    count_option(parser, "--sample", 1000, sample_help)
