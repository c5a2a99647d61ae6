"""`memory`: a node's resident memory per key.

Starts one node (durable unless --memory), reads its resident memory (VmRSS
of /proc/PID/status) once it is idle, writes N mv keys with small values,
waits until it is idle again and reads VmRSS again.  It reports VmRSS / N,
the growth per key and the write rate; a random sample of keys must read
back exactly what was written, and the node must hold all N.

Target: at most 400 bytes of resident memory per key (VmRSS / N) at
1,000,000 keys with small values.
"""

from __future__ import annotations

import argparse
from typing import Any

from .fill import add_fill_options, check_filled, fill, fill_params, fill_sample, writes_row
from .load import LoadResult
from .machine import resident_memory
from .options import single_node_options
from .report import Report, Target, mib_text, row
from .session import IDLE_TIMEOUT, Session, wait_idle

MEMORY_PER_KEY_LIMIT = 400  # resident bytes per MV key, small values, 1,000,000 keys


async def run(args: argparse.Namespace, s: Session) -> Report:
    """Resident memory of an idle node before and after it takes N mv keys."""
    node = s.first
    assert node.process is not None
    s.phase = "waiting for the fresh node to be idle"
    await wait_idle(s, node)
    before = resident_memory(node.process.pid)
    s.phase = f"writing {args.keys} mv keys"
    load = await fill(node, "mv_write", args.keys, args.value_bytes, args.connections, args.window)
    s.phase = "waiting for the node to be idle after the writes"
    idle_after = await wait_idle(s, node)
    after = resident_memory(node.process.pid)

    s.phase = "checking a sample and the key count"
    figures, lines, problems = await check_filled(s, args, fill_sample(args))
    durability = (await s.status())[node.id]["durability"]["mode"]
    report = memory_report(args, durability, load, idle_after, before, after)
    report.figures.update(figures)
    report.lines += lines
    report.failure = "; ".join(problems)
    return report


def memory_report(
    args: argparse.Namespace,
    durability: str,
    load: LoadResult,
    idle_after: float | None,
    before: dict[str, int],
    after: dict[str, int],
) -> Report:
    keys = args.keys
    per_key = after["VmRSS"] / keys
    growth = (after["VmRSS"] - before["VmRSS"]) / keys
    node = "one node in memory" if durability == "memory" else "one durable node"
    if durability != "memory":
        node += f" (durability {durability})"
    lines = [
        f"memory: {keys} mv keys with {args.value_bytes}-byte values written to {node}; "
        "resident memory from /proc/PID/status with the node idle",
        "",
        writes_row(load, args),
        row(
            "idle again after the writes",
            "-" if idle_after is None else f"{idle_after:.1f} s",
            "" if idle_after is not None else f"still busy after {IDLE_TIMEOUT:g} s; measured",
        ),
        row("VmRSS after start", mib_text(before["VmRSS"]), _rss_parts(before)),
        row(f"VmRSS with {keys:,} keys", mib_text(after["VmRSS"]), _rss_parts(after)),
        row("peak VmRSS (VmHWM)", mib_text(after.get("VmHWM", 0))),
        row("bytes per key: VmRSS / keys", f"{per_key:,.0f}"),
        row("bytes per key: growth since start / keys", f"{growth:,.0f}"),
    ]
    figures: dict[str, Any] = {
        "write_seconds": load.seconds,
        "writes_per_s": load.ops_per_s,
        "idle_after_writes_s": idle_after,
        "before_bytes": before,
        "after_bytes": after,
        "rss_bytes_per_key": per_key,
        "rss_growth_bytes_per_key": growth,
    }
    params = {**fill_params(args), "durability": durability}
    targets = [
        Target(f"resident bytes per mv key at {keys:,} keys", per_key, MEMORY_PER_KEY_LIMIT, "B")
    ]
    return Report("memory", params, figures, lines, targets)


def _rss_parts(memory: dict[str, int]) -> str:
    if "RssAnon" not in memory or "RssFile" not in memory:
        return ""
    return f"anonymous {mib_text(memory['RssAnon'])}, file-backed {mib_text(memory['RssFile'])}"


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    memory = commands.add_parser(
        "memory",
        help="fill one node with N mv keys: its resident memory per key",
        description="Start one node (durable unless --memory), read its resident memory "
        "(VmRSS of /proc/PID/status) once it is idle, write KEYS mv keys, wait until it is "
        "idle again and read VmRSS again; report bytes per key, as VmRSS / KEYS (target: "
        "at most 400 at 1,000,000 keys with small values) and as the growth / KEYS, and "
        "the write rate. Every sampled key must read back its value.",
    )
    add_fill_options(memory, "random keys read back after the writes")
    memory.add_argument(
        "--memory", action="store_true", help="the node runs with --memory (default: durable)"
    )
    single_node_options(memory, 900.0)
    memory.set_defaults(run=run)
