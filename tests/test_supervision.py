"""Supervisors and their nodes: every way a supervisor ends, every node and helper ends too.

`scripts/run.py cluster` and `replica cluster up` run under a subreaper of
the test's own (REAPER below), so a node orphaned by its supervisor's death
is reaped there and its exit code is seen, and nothing is left as a zombie
that would look alive.  The process tree (nodes, their log writers and
checkpointers) is read from /proc before the supervisor is stopped: nodes
and helpers run in sessions of their own, so only parent links find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replica.durable.commit_log import list_segments
from tests.harness import (
    LOOPBACK,
    JsonClient,
    eventually,
    free_ports,
    replica_command,
    wait_unlocked,
    write_cluster,
)

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 20.0
NODES = ("n1", "n2", "n3")
STOP_SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]

REAPER = """
import ctypes, os, subprocess, sys
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
with open(sys.argv[1], "ab") as log:
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
print(child.pid, flush=True)
while True:
    try:
        pid, status = os.wait()
    except ChildProcessError:
        break
    print(pid, os.waitstatus_to_exitcode(status), flush=True)
"""
"""Runs argv[2:] with output to argv[1]; prints its pid, then `pid exitcode` of every
process it reaps: its child, and every descendant orphaned on the way."""


# -- processes -----------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def gone(pid: int) -> bool:
    """Whether `pid` has exited: no process, or a zombie (its files are closed)."""
    fields = _stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of `root`, by parent links: pid → command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and fields[0] not in ("Z", "X"):
                parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                found[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")
                frontier.append(pid)
    return found


def role(cmdline: str) -> str:
    """What a process of the tree is: serve, log_writer, checkpointer or other."""
    for marker, name in (
        ("-m replica.durable.checkpointer ", "checkpointer"),
        ("-m replica.durable.log_writer ", "log_writer"),
        ("-m replica serve ", "serve"),
    ):
        if marker in cmdline:
            return name
    return "other"


class Supervised:
    """A supervisor command run under REAPER; everything it started is killed on close."""

    def __init__(self, argv: list[str], log: Path, cwd: Path) -> None:
        self.log = log
        self.exits: dict[int, int] = {}
        self.seen: set[int] = set()  # every pid ever collected from the tree, for cleanup
        self.reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, str(log), *argv],
            cwd=cwd,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.reaper.stdout is not None
        self.pid = int(self.reaper.stdout.readline())
        self._reader = threading.Thread(target=self._read_exits, daemon=True)
        self._reader.start()

    def _read_exits(self) -> None:
        assert self.reaper.stdout is not None
        for line in self.reaper.stdout:
            pid, code = map(int, line.split())
            self.exits[pid] = code

    def tree(self) -> dict[int, str]:
        found = descendants(self.reaper.pid)
        self.seen.update(found)
        return found

    def wait_tree(self, nodes: int) -> dict[int, str]:
        """Until each of `nodes` nodes has its log writer and its checkpointer; the whole tree.

        The checkpointer starts at the node's first checkpoint, after a write.
        """
        deadline = time.monotonic() + DEADLINE
        while True:
            tree = self.tree()
            roles = [role(cmdline) for cmdline in tree.values()]
            if all(roles.count(r) == nodes for r in ("serve", "log_writer", "checkpointer")):
                return tree
            assert self.pid not in self.exits, f"the supervisor exited:\n{self.log_text()}"
            assert time.monotonic() < deadline, f"tree never complete: {tree}\n{self.log_text()}"
            time.sleep(0.1)

    def wait_exits(self, pids: list[int]) -> dict[int, int]:
        """Until REAPER has reaped each of `pids`: their exit codes."""
        deadline = time.monotonic() + DEADLINE
        while not all(pid in self.exits for pid in pids):
            missing = [pid for pid in pids if pid not in self.exits]
            assert time.monotonic() < deadline, (
                f"{missing} not reaped; tree {self.tree()}\n{self.log_text()}"
            )
            time.sleep(0.05)
        return {pid: self.exits[pid] for pid in pids}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        for pid in [*self.tree(), *self.seen]:
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        try:
            self.reaper.wait(DEADLINE)  # it exits once it has nothing left to reap
        except subprocess.TimeoutExpired:
            self.reaper.kill()
            self.reaper.wait()
        self._reader.join(DEADLINE)


@contextlib.contextmanager
def supervised(argv: list[str], log: Path, cwd: Path) -> Iterator[Supervised]:
    running = Supervised(argv, log, cwd)
    try:
        yield running
    finally:
        running.close()
        print(f"--- {' '.join(argv)} ---\n{running.log_text()}")


def wait_gone(pids: list[int], what: str, log: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        alive = [pid for pid in pids if not gone(pid)]
        if not alive:
            return
        assert time.monotonic() < deadline, f"{what}: {alive} still running\n{log}"
        time.sleep(0.05)


def wait_listening(ports: list[int], running: Supervised) -> None:
    deadline = time.monotonic() + DEADLINE
    for port in ports:
        while True:
            assert running.pid not in running.exits, f"exited early:\n{running.log_text()}"
            try:
                with socket.create_connection((LOOPBACK, port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"port {port} never listened"
                time.sleep(0.05)


async def write_everywhere(ports: list[int], key: str, value: str) -> None:
    """Write `key` on every node: each node's log gets a record, and so a checkpoint."""
    for port in ports:
        async with await JsonClient.connect(LOOPBACK, port) as client:
            reply = await client.request({"type": "mv_write", "key": key, "value": value})
            assert reply["type"] == "mv_write_ok", reply


async def read_each(ports: list[int], key: str) -> list[set[object]]:
    """The values visible on each node (siblings too), without their dots."""
    seen = []
    for port in ports:
        async with await JsonClient.connect(LOOPBACK, port) as client:
            reply = await client.request({"type": "mv_read", "key": key})
            seen.append({sibling["value"] for sibling in reply["values"]})
    return seen


def cluster_file(directory: Path) -> tuple[Path, list[int]]:
    ports = free_ports(len(NODES))
    return write_cluster(directory, NODES, ports=ports, gossip_interval_ms=50), ports


def run_py_root(directory: Path) -> Path:
    """A copy of scripts/run.py in a root of its own whose `.venv` is this interpreter's.

    run.py takes its root from where it lies, so the copy uses the `.venv`
    given here, recorded as installed for its pyproject.toml: it installs
    nothing and starts `replica` at once, as a second run does.
    """
    root = directory / "root"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "run.py", root / "scripts" / "run.py")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    venv_bin = root / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    replica = venv_bin / "replica"
    replica.write_text(
        f"#!{sys.executable}\nimport sys\nfrom replica.cli.main import main\nsys.exit(main())\n"
    )
    replica.chmod(0o755)
    digest = hashlib.sha256((root / "pyproject.toml").read_bytes()).hexdigest()
    (root / ".venv" / ".installed-pyproject").write_text(digest)
    return root


def stop_and_check(running: Supervised, sig: int, ports: list[int]) -> None:
    """Send `sig` to the supervisor: it exits 0, and every node and helper is gone."""
    asyncio.run(write_everywhere(ports, "k", "v"))
    tree = running.wait_tree(len(NODES))
    os.kill(running.pid, sig)
    assert running.wait_exits([running.pid]) == {running.pid: 0}, running.log_text()
    wait_gone(list(tree), f"after {sig!r} to the supervisor", running.log_text())
    for node_id in NODES:
        assert f"{node_id} stopped" in running.log_text()


# -- the tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_to_run_py_cluster_stops_every_node_and_helper(
    scratch_dir: Path, sig: int
) -> None:
    config, ports = cluster_file(scratch_dir)
    root = run_py_root(scratch_dir)
    argv = [sys.executable, str(root / "scripts" / "run.py"), "cluster", "--config", str(config)]
    with supervised(argv, scratch_dir / "run.log", cwd=scratch_dir) as running:
        wait_listening(ports, running)
        stop_and_check(running, sig, ports)


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_to_cluster_up_stops_every_node_and_helper(scratch_dir: Path, sig: int) -> None:
    config, ports = cluster_file(scratch_dir)
    argv = replica_command("cluster", "up", "--config", str(config))
    with supervised(argv, scratch_dir / "up.log", cwd=scratch_dir) as running:
        wait_listening(ports, running)
        stop_and_check(running, sig, ports)


async def written_everywhere(ports: list[int], running: Supervised) -> None:
    """Once the cluster listens, key "before" written on every node and seen on every node."""
    await asyncio.to_thread(wait_listening, ports, running)
    await write_everywhere(ports, "before", "kill")
    await eventually(
        lambda: read_each(ports, "before"),
        lambda seen: seen == [{"kill"}] * len(NODES),
        "the write on every node",
    )


async def test_nodes_of_a_killed_cluster_up_stop_cleanly_and_a_new_one_starts(
    scratch_dir: Path,
) -> None:
    config, ports = cluster_file(scratch_dir)
    argv = replica_command("cluster", "up", "--config", str(config))
    with supervised(argv, scratch_dir / "first.log", cwd=scratch_dir) as first:
        await written_everywhere(ports, first)
        tree = await asyncio.to_thread(first.wait_tree, len(NODES))
        nodes = [pid for pid, cmdline in tree.items() if role(cmdline) == "serve"]
        os.kill(first.pid, signal.SIGKILL)
        exits = await asyncio.to_thread(first.wait_exits, [first.pid, *nodes])
        assert exits == {first.pid: -signal.SIGKILL, **dict.fromkeys(nodes, 0)}, first.log_text()
        await asyncio.to_thread(wait_gone, list(tree), "after SIGKILL", first.log_text())
        log = first.log_text()
        for node_id in NODES:
            assert f"{node_id} stopped" in log
            data_dir = scratch_dir / "data" / node_id
            wait_unlocked(data_dir, timeout=0.5)  # released at once: nothing left holds it
            assert list_segments(data_dir) == [], "no final checkpoint"

    with supervised(argv, scratch_dir / "second.log", cwd=scratch_dir) as second:
        await asyncio.to_thread(wait_listening, ports, second)
        assert await read_each(ports, "before") == [{"kill"}] * len(NODES)


async def test_a_cluster_up_started_right_after_a_killed_one_waits_for_its_data_dirs(
    scratch_dir: Path,
) -> None:
    """The old nodes still hold their data dirs while they stop; the new ones wait for them."""
    config, ports = cluster_file(scratch_dir)
    argv = replica_command("cluster", "up", "--config", str(config))
    with supervised(argv, scratch_dir / "first.log", cwd=scratch_dir) as first:
        await written_everywhere(ports, first)
        await asyncio.to_thread(first.wait_tree, len(NODES))
        os.kill(first.pid, signal.SIGKILL)
        with supervised(argv, scratch_dir / "second.log", cwd=scratch_dir) as second:

            async def second_log() -> str:
                return second.log_text()

            await eventually(
                second_log,
                lambda log: all(f"{n} listening" in log for n in NODES) or "exited" in log,
                "every node of the second cluster listening",
            )
            log = second.log_text()
            assert "in use" not in log and "exited" not in log, log
            assert await read_each(ports, "before") == [{"kill"}] * len(NODES)


def test_serve_stops_cleanly_at_the_end_of_its_watch_fd(scratch_dir: Path) -> None:
    (port,) = free_ports(1)
    config = write_cluster(scratch_dir, ["n1"], ports=[port])
    watch, lifeline = os.pipe()
    log = scratch_dir / "n1.log"
    with log.open("wb") as out:
        node = subprocess.Popen(
            replica_command(
                "serve", "--config", str(config), "--node", "n1", "--watch-fd", str(watch)
            ),
            stdout=out,
            stderr=out,
            pass_fds=(watch,),
            start_new_session=True,
        )
    os.close(watch)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert node.poll() is None, log.read_text()
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
                break
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        os.close(lifeline)
        lifeline = -1
        assert node.wait(DEADLINE) == 0, log.read_text()
        assert "supervisor gone" in log.read_text()
        assert "n1 stopped" in log.read_text()
    finally:
        if lifeline >= 0:
            os.close(lifeline)
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def test_serve_refuses_a_watch_fd_that_is_not_open(scratch_dir: Path) -> None:
    config = write_cluster(scratch_dir, ["n1"])
    result = subprocess.run(
        replica_command("serve", "--config", str(config), "--node", "n1", "--watch-fd", "999"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "--watch-fd" in result.stderr and "Traceback" not in result.stderr
    assert (
        "supervisor"
        in subprocess.run(
            replica_command("serve", "--help"), capture_output=True, text=True, timeout=30
        ).stdout
    )
