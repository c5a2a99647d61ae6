"""Fixtures that run real nodes: started fresh per test, stopped and removed after.

Each node's log is printed at teardown, which pytest shows only for a failed test.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import (
    LOOPBACK,
    NodeProcess,
    ProxiedCluster,
    free_ports,
    proxied_cluster,
    write_cluster,
)

SMALL_MAX_LINE_BYTES = 4096


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """A temporary directory removed after the test, whatever its outcome."""
    with tempfile.TemporaryDirectory(prefix="replica-test-") as name:
        yield Path(name)


@pytest.fixture
def start_node(scratch_dir: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Start a one-node cluster (n1) with the given [cluster] settings; ready on return."""
    started: list[NodeProcess] = []

    def start(**cluster: int) -> NodeProcess:
        directory = scratch_dir / f"cluster{len(started)}"
        directory.mkdir()
        (port,) = free_ports(1)
        config = write_cluster(directory, ["n1"], ports=[port], **cluster)
        node = NodeProcess(config, "n1", LOOPBACK, port)
        started.append(node)
        node.start().wait_ready()
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()
            print(f"--- {node.node_id} (port {node.port}) log ---\n{node.stderr_text()}")


@pytest.fixture
def node(start_node: Callable[..., NodeProcess]) -> NodeProcess:
    """A running node n1 whose max_line_bytes is small enough to exceed cheaply."""
    return start_node(max_line_bytes=SMALL_MAX_LINE_BYTES)


@pytest.fixture
async def cluster() -> AsyncIterator[ProxiedCluster]:
    """Nodes n1, n2, n3 gossiping every 50 ms, each directed link through its own proxy."""
    async with proxied_cluster(("n1", "n2", "n3"), gossip_interval_ms=50) as running:
        yield running
