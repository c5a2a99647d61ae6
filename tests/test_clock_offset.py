"""A node's hybrid clock shifted on purpose (`--clock-offset-ms`, `$REPLICA_CLOCK_OFFSET_MS`).

Fault tests skew one node's clock without touching the machine's: the node
reads the wall clock plus the offset, so the timestamps it issues move by it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from replica.crdt.hlc import LOGICAL_BITS

HOUR_MS = 3_600_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "cluster.toml"
    port = free_port()
    path.write_text(f'[[nodes]]\nid = "n1"\nhost = "127.0.0.1"\nport = {port}\n')
    yield path


def issued_timestamp_ms(config: Path, *flags: str, env: dict[str, str] | None = None) -> int:
    """Start a node in memory, have it issue one LWW timestamp, stop it; the timestamp's ms."""
    port = int(config.read_text().rsplit("port = ", 1)[1])
    command = [sys.executable, "-m", "replica", "serve", "--config", str(config), "--node", "n1"]
    process = subprocess.Popen(
        [*command, "--memory", *flags],
        env={**os.environ, **(env or {})},
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "node never listened"
                time.sleep(0.05)
        with sock, sock.makefile("rwb") as stream:
            stream.write(b'{"type": "lww_write", "key": "k", "value": 1}\n')
            stream.flush()
            reply = json.loads(stream.readline())
        assert reply["type"] == "lww_write_ok", reply
        timestamp: int = reply["timestamp"]
        return timestamp >> LOGICAL_BITS
    finally:
        process.terminate()
        process.wait(timeout=20)
        if process.stderr is not None:
            process.stderr.close()


def test_the_flag_moves_the_issued_timestamps(config: Path) -> None:
    before = time.time_ns() // 1_000_000
    issued = issued_timestamp_ms(config, "--clock-offset-ms", str(HOUR_MS))
    after = time.time_ns() // 1_000_000
    assert before + HOUR_MS <= issued <= after + HOUR_MS


def test_the_environment_variable_moves_them_back(config: Path) -> None:
    before = time.time_ns() // 1_000_000
    issued = issued_timestamp_ms(config, env={"REPLICA_CLOCK_OFFSET_MS": str(-HOUR_MS)})
    after = time.time_ns() // 1_000_000
    assert before - HOUR_MS <= issued <= after - HOUR_MS


def test_without_an_offset_the_node_reads_the_wall_clock(config: Path) -> None:
    before = time.time_ns() // 1_000_000
    issued = issued_timestamp_ms(config)
    after = time.time_ns() // 1_000_000
    assert before <= issued <= after


@pytest.mark.parametrize(
    ("flags", "env", "said"),
    [
        ((), {"REPLICA_CLOCK_OFFSET_MS": "soon"}, "$REPLICA_CLOCK_OFFSET_MS must be an integer"),
        (("--clock-offset-ms", str(10**15)), {}, "--clock-offset-ms must be from"),
    ],
)
def test_a_bad_offset_is_a_usage_error(
    config: Path, flags: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    command = [sys.executable, "-m", "replica", "serve", "--config", str(config), "--node", "n1"]
    done = subprocess.run(
        [*command, "--memory", *flags],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert said in done.stderr
