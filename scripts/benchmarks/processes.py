"""Child processes that stop whatever happens.

Nodes are the testing kit's `NodeProcess`, stopped as the kit stops them and
their durable helpers reaped.  Every other child (the proxy process, the
floor, redis-server, samplers) leads its own process group (a terminal's
Ctrl-C reaches only the benchmark), so stopping signals the group: SIGTERM,
then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from replica.testing.process import NodeProcess

STOP_TIMEOUT = 5.0


class Children:
    """Every process the benchmark started, so that all of them stop at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.nodes: list[NodeProcess] = []

    def start_node(self, node: NodeProcess) -> NodeProcess:
        """Start `node` (`replica serve`); it is stopped, its helpers reaped, at the end."""
        self.nodes.append(node.start())
        return node

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        log: Path,
        control: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` logging to `log`; with `control`, its stdin and stdout are pipes."""
        pipe = subprocess.PIPE if control else subprocess.DEVNULL
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=pipe,
                stdout=subprocess.PIPE if control else log_file,
                stderr=log_file,
                start_new_session=True,
                env=None if env is None else dict(env),
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """The other children, signalled all at once; then the nodes, one by one as the kit does."""
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_group(process, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        for process in self.processes:
            if process.stdout is not None:
                process.stdout.close()
        for node in self.nodes:
            node.stop(STOP_TIMEOUT)
        for node in self.nodes:
            node.reap_helpers()


def signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def log_tail(path: Path, lines: int = 20, separator: str = "\n") -> str:
    """The last `lines` lines of a log, or "" if it cannot be read."""
    try:
        return separator.join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
