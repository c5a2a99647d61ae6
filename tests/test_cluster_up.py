"""`replica cluster up` and `replica status` as a user runs them: real processes, real TCP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    LOOPBACK,
    JsonClient,
    eventually,
    free_ports,
    replica_command,
    write_cluster,
)

DEADLINE = 15.0


def wait_until_listening(ports: list[int], process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    pending = list(ports)
    while pending:
        assert process.poll() is None, "cluster up exited early"
        try:
            with socket.create_connection((LOOPBACK, pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            assert time.monotonic() < deadline, f"ports {pending} never listened"
            time.sleep(0.05)


def children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def status_table(config: Path) -> tuple[str, dict[str, list[str]]]:
    """`replica status`'s table, and its rows split into columns by node id."""
    status = subprocess.run(
        replica_command("status", "--config", str(config)), capture_output=True, timeout=30
    )
    table = status.stdout.decode()
    assert status.returncode == 0, table + status.stderr.decode()
    return table, {line.split()[0]: line.split() for line in table.splitlines()[1:]}


@pytest.fixture
def cluster(scratch_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], list[int], Path]]:
    ports = free_ports(3)
    config = write_cluster(scratch_dir, ["n1", "n2", "n3"], ports=ports, gossip_interval_ms=50)
    log = open(scratch_dir / "cluster.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        replica_command("cluster", "up", "--config", str(config)),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=scratch_dir,
        start_new_session=True,
    )
    try:
        wait_until_listening(ports, process)
        yield process, ports, config
    finally:
        if process.poll() is None:
            nodes = children_of(process.pid)  # each in a session of its own
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            for pid in nodes:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        log.close()
        print((scratch_dir / "cluster.log").read_text(errors="replace"))


async def test_cluster_up_runs_every_node_replicates_and_stops_them_all(cluster) -> None:
    process, ports, config = cluster
    async with await JsonClient.connect(LOOPBACK, ports[0]) as n1:
        written = await n1.request({"type": "mv_write", "key": "k", "value": "v"})
        assert written["type"] == "mv_write_ok"
    async with await JsonClient.connect(LOOPBACK, ports[2]) as n3:
        deadline = time.monotonic() + DEADLINE
        while (await n3.request({"type": "mv_read", "key": "k"}))["values"] == []:
            assert time.monotonic() < deadline, "the write never reached n3"
            await asyncio.sleep(0.05)

    async def status() -> tuple[str, dict[str, list[str]]]:
        return status_table(config)

    # n2 hears of the write by gossip too, maybe after n3 did: ask until it has
    table, rows = await eventually(
        status, lambda seen: all(row[1] == "1" for row in seen[1].values()), "the key on every node"
    )
    assert sorted(rows) == ["n1", "n2", "n3"], table
    assert all(row[1] == "1" for row in rows.values()), table  # one mv key everywhere
    disk = table.splitlines()[0].split().index("disk") - 1  # "max sib" is one cell of a row
    assert all(row[disk] == "sync" for row in rows.values()), table  # durable, nothing failed

    children = children_of(process.pid)
    assert len(children) == 3
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE) == 0
    deadline = time.monotonic() + DEADLINE
    while any(alive(pid) for pid in children):
        assert time.monotonic() < deadline, "a node outlived cluster up"
        time.sleep(0.05)


def test_status_reports_a_down_node_and_fails(scratch_dir: Path) -> None:
    config = write_cluster(scratch_dir, ["n1", "n2"], ports=free_ports(2))
    status = subprocess.run(
        replica_command("status", "--config", str(config)), capture_output=True, timeout=30
    )
    assert status.returncode == 1
    assert "down" in status.stdout.decode()


def test_the_status_table_shows_each_nodes_disk_and_its_failures() -> None:
    from replica.cli.status_table import format_table

    durable = {"mode": "sync", "failures": 2, "checkpoint_failures": 1, "checkpoints": 4}
    table = format_table(
        [
            ("n1", {"keys": {"mv": 3}, "durability": {"mode": "memory"}, "peers": []}),
            (
                "n2",
                {
                    "keys": {"mv": 3},
                    "durability": durable,
                    "peers": [],
                    "tombstones": {"mv": 2, "lww": 1},
                    "tombstones_collected": {"mv": 5},
                },
            ),
            ("n3", "down (ConnectionRefusedError)"),
        ]
    )
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    header = table.splitlines()[0].split()
    assert header[header.index("sib") + 1] == "disk"  # after "max sib"
    disk = header.index("disk") - 1  # "max sib" is one cell of a row
    assert rows["n1"][disk] == "memory"
    assert rows["n2"][disk] == "sync,commits-FAILED:2,checkpoints-FAILED:1"
    assert rows["n3"][disk] == "-"
    tombstones = header.index("tombstones") - 1
    assert [rows[n][tombstones] for n in ("n1", "n2", "n3")] == ["0,0-gone", "3,5-gone", "-"]
