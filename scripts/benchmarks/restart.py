"""`restart`: how long a durable node holding N keys takes to answer again after a crash.

Writes N mv keys to a durable node, kills it with SIGKILL, starts it again
and times the way from the process start to a correct mv_read (a reply of
"still loading" is asked again); then a random sample of keys must read back
exactly what was written, and the node must hold all N.

Target: under 10 s from the process start to a correct read for 1,000,000 keys.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import Any

import orjson

from replica.testing.ports import LOOPBACK

from .clients import READ_LIMIT
from .fill import add_fill_options, check_filled, fill, fill_params, fill_sample, writes_row
from .load import LoadResult
from .options import single_node_options
from .report import BenchError, Report, Target, row
from .session import NodeHandle, Session
from .workload import encode, key_name, value_for

RESTART_SECONDS_LIMIT = 10.0
RESTART_TIMEOUT = 300.0
LOADED_LINE = re.compile(r"loaded (\d+) keys in (\d+) ms")
NOT_READY_CODE = 11  # the node's "temporarily unavailable": still loading


async def run(args: argparse.Namespace, s: Session) -> Report:
    """Fill a durable node, SIGKILL it, and time its restart to a correct first read."""
    node = s.first
    s.phase = f"writing {args.keys} mv keys"
    load = await fill(node, "mv_write", args.keys, args.value_bytes, args.connections, args.window)

    s.phase = f"killing {node.id} with SIGKILL"
    await s.stop_node(node.id, crash=True)
    sample = fill_sample(args)
    s.log_level = "info"  # for the "loaded N keys in X ms" line
    s.phase = f"restarting {node.id} over {args.keys} keys"
    s.start_node(node.id)
    ready, first_connect = await first_correct_read(s, node, sample[0], args.value_bytes)
    await s.wait_ready(node.id)

    s.phase = "checking the sample and the key count"
    figures, lines, problems = await check_filled(s, args, sample)
    loaded = LOADED_LINE.findall(node.log.read_text(errors="replace"))
    report = restart_report(args, load, ready, first_connect, loaded[-1] if loaded else None)
    report.figures.update(figures)
    report.lines += lines
    if not loaded:
        problems.append(f"no 'loaded N keys in X ms' line in {node.log}")
    report.failure = "; ".join(problems)
    return report


async def first_correct_read(
    s: Session, node: NodeHandle, index: int, size: int
) -> tuple[float, float]:
    """Seconds from the process start to a correct mv_read, and to the first accepted connection.

    Polls with a new connection every few milliseconds until the node listens;
    a reply of error 11 (still loading) is asked again.
    """
    deadline = node.spawned_at + RESTART_TIMEOUT
    first_connect: float | None = None
    request = encode({"type": "mv_read", "key": key_name(index)}, 1)
    expected = value_for(node.id, index, size)
    while time.monotonic() < deadline:
        s.check_alive()
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, node.port, limit=READ_LIMIT)
        except OSError:
            await asyncio.sleep(0.005)
            continue
        if first_connect is None:
            first_connect = time.monotonic() - node.spawned_at
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                line = await reader.readline()
                if not line:
                    break
                reply = orjson.loads(line)
                if reply.get("type") == "error" and reply.get("code") == NOT_READY_CODE:
                    await asyncio.sleep(0.005)
                    continue
                values = reply.get("values")
                if reply.get("type") != "mv_read_ok" or not values:
                    raise BenchError(f"{key_name(index)} after the restart: {reply!r:.300}")
                if [v.get("value") for v in values] != [expected]:
                    raise BenchError(f"{key_name(index)} read back wrong: {reply!r:.300}")
                return time.monotonic() - node.spawned_at, first_connect
        finally:
            writer.close()
    raise BenchError(f"{node.id} gave no correct read {RESTART_TIMEOUT:g} s after its start")


def restart_report(
    args: argparse.Namespace,
    load: LoadResult,
    ready: float,
    first_connect: float,
    loaded: tuple[str, str] | None,
) -> Report:
    figures: dict[str, Any] = {
        "write_seconds": load.seconds,
        "writes_per_s": load.ops_per_s,
        "restart_to_first_connection_s": first_connect,
        "restart_to_correct_read_s": ready,
        "logged_keys": int(loaded[0]) if loaded else None,
        "logged_load_ms": int(loaded[1]) if loaded else None,
    }
    logged = f"{int(loaded[0]):,} keys in {int(loaded[1]):,} ms" if loaded else "-"
    lines = [
        f"restart: {args.keys} mv keys with {args.value_bytes}-byte values on one durable "
        f"node (durability sync), SIGKILL, restart",
        "",
        writes_row(load, args),
        row("process start to first accepted connection", f"{first_connect:.3f} s"),
        row("process start to a correct mv_read", f"{ready:.3f} s"),
        row("the node's log: loaded", logged),
    ]
    targets = [
        Target("seconds from process start to a correct read", ready, RESTART_SECONDS_LIMIT, "s")
    ]
    return Report("restart", fill_params(args), figures, lines, targets)


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    restart = commands.add_parser(
        "restart",
        help="fill a durable node, SIGKILL it, time the restart to a correct read",
        description="Write KEYS mv keys to one durable node, kill it with SIGKILL, start it "
        "again and measure the time from the process start to a correct mv_read (target: "
        "under 10 s for 1,000,000 keys); then every sampled key must read back its value.",
    )
    add_fill_options(restart, "random keys read back after the restart")
    single_node_options(restart, 900.0)
    restart.set_defaults(run=run)
