"""The command line: one subcommand per scenario, each run in a session under a deadline.

Everything the run started is stopped, and its temporary directory removed,
on exit, on error, on Ctrl-C, on SIGTERM and when the deadline passes.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Sequence
from importlib.util import find_spec
from pathlib import Path

import uvloop

from . import compare, converge, memory, quorum_cost, resp, restart, throughput, tls_cost
from .machine import describe
from .options import cluster_options
from .processes import Children
from .report import EXIT_FAILED, BenchError, Report
from .session import Session, running

SCENARIOS = (converge, throughput, restart, memory, resp, compare, tls_cost, quorum_cost)

Runner = Callable[[argparse.Namespace, Session], Awaitable[Report]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="The project's benchmark: real node processes on loopback, measured "
        "from outside.",
        epilog="Exit status: 0 every target met, 1 a target missed, 3 the run failed.",
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    common = cluster_options()
    for scenario in SCENARIOS:
        scenario.add_parser(commands, common)
    return parser


async def _run(args: argparse.Namespace, children: Children, directory: Path) -> Report:
    """The scenario under the global deadline, naming the phase it was in if it passes."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    s = Session(
        directory,
        children,
        args.nodes,
        args.gossip_interval_ms,
        memory=args.memory,
        resp=getattr(args, "resp", False),
    )
    run: Runner = args.run
    try:
        async with asyncio.timeout(args.timeout), running(s):
            return await run(args, s)
    except TimeoutError:
        raise BenchError(f"no result within the {args.timeout:g} s deadline ({s.phase})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = args.check(args) if hasattr(args, "check") else None
    if problem:
        parser.error(problem)
    if find_spec("replica") is None:
        print(f"{sys.executable} cannot import replica; use .venv/bin/python", file=sys.stderr)
        return EXIT_FAILED
    host = describe()
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="replica-bench-") as directory:
            try:
                report = uvloop.run(_run(args, children, Path(directory)))
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the (bounded) cleanup finish
                children.stop_all()
    except BenchError as exc:
        print(f"bench {args.command} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the run
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug in the benchmark itself: show it, but never as a target miss
        traceback.print_exc()
        return EXIT_FAILED
    report.machine = host
    print(report.to_json().decode() if args.json else report.to_text())
    return report.exit_status
