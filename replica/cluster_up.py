"""`replica cluster up`: every node of a cluster file as child processes, one log.

The supervisor prints each node's address, prefixes each child's log lines
with its node id, and stops every child together on Ctrl-C or SIGTERM.  If one
node dies on its own the others are stopped too and the exit code says so:
a local cluster that silently lost a member would make every test run on it lie.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from replica.config import ClusterConfig

STOP_GRACE_SECONDS = 5.0


async def cluster_up(config_path: Path, config: ClusterConfig, log_level: str) -> int:
    children: dict[str, asyncio.subprocess.Process] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    width = max(len(n.id) for n in config.nodes)
    pumps: list[asyncio.Task[None]] = []
    died: list[str] = []
    try:
        for node in config.nodes:
            children[node.id] = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "replica",
                "serve",
                "--config",
                str(config_path),
                "--node",
                node.id,
                "--log-level",
                log_level,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them in order
            )
            print(f"{node.id} at {node.host}:{node.port}", flush=True)
        pumps = [
            asyncio.create_task(_pump(node_id.ljust(width), child))
            for node_id, child in children.items()
        ]
        waits = [asyncio.create_task(stop.wait())]
        waits += [asyncio.create_task(child.wait()) for child in children.values()]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
        died = [node_id for node_id, child in children.items() if child.returncode is not None]
        if died and not stop.is_set():
            print(f"cluster: {', '.join(died)} exited; stopping the others", flush=True)
    finally:
        await _stop_all(children)
    for pump in pumps:
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    return 0 if stop.is_set() and not died else 1


async def _pump(prefix: str, child: asyncio.subprocess.Process) -> None:
    assert child.stdout is not None
    async for raw in child.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        print(f"{prefix} | {line}", flush=True)


async def _stop_all(children: dict[str, asyncio.subprocess.Process]) -> None:
    running = [c for c in children.values() if c.returncode is None]
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.gather(*(c.wait() for c in running)), STOP_GRACE_SECONDS)
    except TimeoutError:
        for child in running:
            if child.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
