"""Node processes: `python -m replica serve`, started, paused, killed and restarted.

Contract: a `NodeProcess` runs one node of a cluster file in its own process
group, with its output appended to `<node_id>.stderr.log` beside the file, so a
failing test can show what the node logged.  Waiting is always for a condition
with a deadline (the port accepts, the process exits), never a fixed sleep.
`stop()` ends the node (SIGTERM, then SIGKILL to its group); `reap_helpers()`
then makes sure the log writer and checkpointer it spawned (in sessions of
their own, so they outlive a kill -9 long enough to finish a write) are gone.
The kit drives the node only as a user could: the CLI, signals, the data dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from replica.testing.cluster_file import Setting, write_cluster_view
from replica.testing.ports import LOOPBACK, free_ports

if TYPE_CHECKING:
    from replica.testing.client import JsonClient

START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
UNLOCK_TIMEOUT = 20.0
POLL_INTERVAL = 0.02
HELPER_MODULES = ("replica.durable.log_writer", "replica.durable.checkpointer")


def replica_command(*args: str) -> list[str]:
    """The command line of `replica ARGS` run by this Python."""
    return [sys.executable, "-m", "replica", *args]


class NodeProcess:
    """One `replica serve` child process, durable in `data/<id>` beside its file or in memory."""

    def __init__(
        self,
        config: Path,
        node_id: str,
        host: str,
        port: int,
        *,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        memory: bool = False,
        env: Mapping[str, str] | None = None,
        resp_port: int | None = None,
    ) -> None:
        """`extra_args` go to every `replica serve` this starts (`--salvage`, say).

        `memory` adds `--memory`; `env` is added to the node's environment
        (`REPLICA_CLOCK_OFFSET_MS`, say); `resp_port` is where the cluster file
        puts its Redis port, if anywhere.
        """
        self.config = config
        self.node_id = node_id
        self.host = host
        self.port = port
        self.resp_port = resp_port
        self.tls: ssl.SSLContext | None = None
        """Set for a node serving TLS: how `connect` reaches it (verifying its node id)."""
        self.log_level = log_level
        self.extra_args = (*extra_args, "--memory") if memory else extra_args
        self.memory = memory
        self.env = dict(env or {})
        self.stderr_path = config.parent / f"{node_id}.stderr.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def data_dir(self) -> Path:
        """Where the cluster files this kit writes put the node's data."""
        return (self.config.parent / "data" / self.node_id).resolve()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *extra: str) -> NodeProcess:
        """Start `replica serve`, with `extra` arguments this time only."""
        command = replica_command(
            "serve", "--config", str(self.config), "--node", self.node_id,
            "--log-level", self.log_level, *self.extra_args, *extra,
        )  # fmt: skip
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=self.config.parent,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        self.paused = False
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT, port: int | None = None) -> None:
        """Return once the node accepts connections; fail with its log if it never does.

        On its JSON port, or on `port` (a RESP port listens a moment after the JSON one).
        """
        port = self.port if port is None else port
        deadline = time.monotonic() + timeout
        while True:
            self._fail_if_exited()
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise self._not_accepting(port, timeout) from None
                time.sleep(POLL_INTERVAL)

    async def ready(self, timeout: float = START_TIMEOUT, port: int | None = None) -> None:
        """`wait_ready` without blocking the event loop."""
        port = self.port if port is None else port
        deadline = time.monotonic() + timeout
        while True:
            self._fail_if_exited()
            try:
                _, writer = await asyncio.open_connection(self.host, port)
            except OSError:
                if time.monotonic() > deadline:
                    raise self._not_accepting(port, timeout) from None
                await asyncio.sleep(POLL_INTERVAL)
            else:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return

    def _fail_if_exited(self) -> None:
        assert self.process is not None, f"{self.node_id} was never started"
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.node_id} exited with {self.process.returncode}:\n{self.stderr_text()}"
            )

    def _not_accepting(self, port: int, timeout: float) -> TimeoutError:
        return TimeoutError(
            f"{self.node_id} not accepting on {self.host}:{port} "
            f"after {timeout}s:\n{self.stderr_text()}"
        )

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL to the whole group if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.resume()
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        """kill -9 the node's group: no shutdown of any kind (its helpers notice by themselves)."""
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the node keeps its sockets but answers nothing until `resume()`."""
        self._signal_group(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`; a no-op otherwise."""
        if self.paused:
            self._signal_group(signal.SIGCONT)
            self.paused = False

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def helper_pids(self) -> list[int]:
        """The log writer and checkpointer processes working on this node's data dir."""
        return [pid for pids in helper_pids(self.data_dir).values() for pid in pids]

    def reap_helpers(self, timeout: float = STOP_TIMEOUT) -> None:
        """Once the node is gone: wait for its helpers to exit, SIGKILL those that do not."""
        if self.memory:
            return
        deadline = time.monotonic() + timeout
        while (pids := self.helper_pids()) and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)  # a stopped process still takes SIGKILL
        wait_unlocked(self.data_dir, timeout)

    def wipe(self) -> None:
        """Remove the data dir of a stopped node, once no process holds its lock."""
        if self.running:
            raise RuntimeError(f"{self.node_id} is still running")
        wait_unlocked(self.data_dir)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def rss_bytes(self) -> int:
        """Resident memory now, from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    async def connect(self) -> JsonClient:
        from replica.testing.client import JsonClient

        return await JsonClient.connect(
            self.host, self.port, tls=self.tls, server_hostname=self.node_id
        )


async def node_ready(node: NodeProcess, timeout: float = START_TIMEOUT) -> None:
    """Wait, without blocking the event loop, until the node accepts connections."""
    await node.ready(timeout)


def helper_pids(data_dir: Path) -> dict[str, list[int]]:
    """The log writer and checkpointer processes working on `data_dir`, from /proc."""
    pids: dict[str, list[int]] = {module: [] for module in HELPER_MODULES}
    needle = str(data_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for module, found in pids.items():
            if module.encode() in argv and any(needle in arg for arg in argv):
                found.append(int(proc.name))
    return pids


def wait_unlocked(data_dir: Path, timeout: float = UNLOCK_TIMEOUT) -> None:
    """Until no process holds `data_dir`'s lock, before the dir is wiped.

    A killed node's log writer exits a moment after its node and may still
    be writing into the dir; a restarted node waits for it, but a wipe
    would not.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(data_dir / "replica.lock", os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{data_dir} still locked after {timeout}s") from None
        finally:
            os.close(fd)
        time.sleep(POLL_INTERVAL)


@contextlib.contextmanager
def running_cluster(
    directory: Path, node_ids: Iterable[str] = ("n1",), **cluster: Setting
) -> Iterator[dict[str, NodeProcess]]:
    """Every node of a fresh cluster file, no proxies, started and ready; all stopped on exit."""
    ids = list(node_ids)
    ports = free_ports(len(ids))
    nodes_at = list(zip(ids, ports, strict=True))
    config = write_cluster_view(directory / "cluster.toml", nodes_at, None, **cluster)
    nodes = {
        node_id: NodeProcess(config, node_id, LOOPBACK, port)
        for node_id, port in zip(ids, ports, strict=True)
    }
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()
