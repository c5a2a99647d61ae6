"""`replica cluster up`: every node of a cluster file as child processes, one log.

The supervisor prints each node's address and stops every child together on
SIGINT (Ctrl-C), SIGTERM or SIGHUP (its terminal closed).  If one node dies
on its own the others are stopped too and the exit code says so: a local
cluster that silently lost a member would make every test run on it lie.

A supervisor killed outright (SIGKILL, the OOM killer) can stop nothing, so
each node also gets the read end of a pipe whose write end only the
supervisor holds (`replica serve --watch-fd`): the kernel closes that end
however the supervisor dies, and the node, seeing end of file, stops as
cleanly as on SIGTERM.  The nodes write their logs, whose lines name their
node, straight to the supervisor's stdout rather than through it, so what a
node logs while stopping after its supervisor's death is still seen.  A
node is started only once nothing holds its data dir (for up to 30 s), so a
cluster started right after such a death waits for its old nodes to finish.

With `--faults` every peer link runs through a proxy this process owns and
`replica fault` controls (see `fault_control`); proxies and control endpoint
stop with the nodes.  Without it nothing of that runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import uvloop

from replica.cli.config import ClusterConfig, load_cluster
from replica.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from replica.cli.fault_state_file import NoFaultEndpoint, read_state_file, state_file_path
from replica.durable.data_dir import lock_holder

STOP_GRACE_SECONDS = 5.0
DATA_DIR_WAIT_SECONDS = 30.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_cluster_up(args: argparse.Namespace) -> int:
    """`replica cluster up`: ConfigError for a cluster file it cannot use."""
    config = load_cluster(args.config)
    config_path = Path(args.config)
    if args.faults:
        from replica.cli.fault_control import check_local

        check_local(config)
        try:
            running = read_state_file(config_path)
        except NoFaultEndpoint as exc:
            if state_file_path(config_path).exists():
                print(f"cluster: {exc}", flush=True)  # stale: replaced once the proxies run
        else:
            text = f"a `cluster up --faults` for {config_path} already runs (pid {running.pid})"
            print(f"replica: {text}", file=sys.stderr)
            return EXIT_FAILURE
    try:
        return uvloop.run(cluster_up(config_path, config, args.log_level, faults=args.faults))
    except OSError as exc:  # a proxy that cannot listen, a state file that cannot be written
        if not args.faults:
            raise
        print(f"replica: cluster up --faults: {exc}", file=sys.stderr)
        return EXIT_FAILURE


async def cluster_up(
    config_path: Path, config: ClusterConfig, log_level: str, *, faults: bool = False
) -> int:
    """Every node as a child until a stop signal or a child's death; with `faults`, proxied."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:  # before any proxy or state file: a signal always cleans up
        loop.add_signal_handler(sig, stop.set)
    if not faults:
        return await _supervise(config_path, config, log_level, stop, {})
    from replica.cli.fault_control import running_faults  # the proxies: only with --faults

    async with running_faults(config_path, config) as peer_options:
        return await _supervise(config_path, config, log_level, stop, peer_options)


async def _supervise(
    config_path: Path,
    config: ClusterConfig,
    log_level: str,
    stop: asyncio.Event,
    peer_options: dict[str, list[str]],
) -> int:
    """Run every node (with its `peer_options`) until `stop` or a node's death; the exit code."""
    children: dict[str, asyncio.subprocess.Process] = {}
    lifelines: list[int] = []  # the write end of each node's --watch-fd pipe, never written
    died: list[str] = []
    try:
        for node in config.nodes:
            if node.data_dir is not None:
                await _wait_for_data_dir(node.id, Path(node.data_dir), stop)
            if stop.is_set():
                break
            watch, lifeline = os.pipe()  # neither end inheritable but through pass_fds
            lifelines.append(lifeline)
            try:
                extra = peer_options.get(node.id, [])
                children[node.id] = await _start_node(config_path, node.id, log_level, watch, extra)
            finally:
                os.close(watch)
            print(f"{node.id} at {node.host}:{node.port}", flush=True)
        waits: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
        waits += [asyncio.create_task(child.wait()) for child in children.values()]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waits:
            waiter.cancel()
        died = [node_id for node_id, child in children.items() if child.returncode is not None]
        if died and not stop.is_set():
            print(f"cluster: {', '.join(died)} exited; stopping the others", flush=True)
    finally:
        await _stop_all(children)
        for fd in lifelines:
            os.close(fd)
    return EXIT_OK if stop.is_set() and not died else EXIT_FAILURE


async def _wait_for_data_dir(node_id: str, data_dir: Path, stop: asyncio.Event) -> None:
    """Until nothing holds the node's data dir, for at most DATA_DIR_WAIT_SECONDS.

    A node of a cluster stopped a moment ago (its supervisor killed, say)
    holds it while it checkpoints on its way out; started meanwhile, the new
    node would refuse the dir as in use.  Past the wait it is started anyway
    and says what holds it.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DATA_DIR_WAIT_SECONDS
    told = False
    while not stop.is_set() and loop.time() < deadline:
        holder = lock_holder(data_dir)
        if holder is None:
            return
        if not told:
            print(f"cluster: {node_id}'s data dir is held by pid {holder}; waiting", flush=True)
            told = True
        await asyncio.sleep(0.05)


async def _start_node(
    config_path: Path, node_id: str, log_level: str, watch: int, extra: list[str]
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replica",
        "serve",
        "--config",
        str(config_path),
        "--node",
        node_id,
        "--log-level",
        log_level,
        "--watch-fd",
        str(watch),
        *extra,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.STDOUT,  # one log stream, on the supervisor's stdout
        pass_fds=(watch,),
        start_new_session=True,  # Ctrl-C reaches the supervisor, which stops them in order
    )


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
