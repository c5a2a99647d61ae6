"""pytest fixtures for scenarios on real clusters, registered through the `pytest11` entry point.

Contract: installing `replica[testing]` makes these fixtures available to any
pytest run, with no conftest.  `replica_cluster` is a factory: each call
(`await replica_cluster(n=3, **options)`, the options of
`replica.testing.cluster`) starts a cluster that is torn down when the test
ends, whatever its outcome, with every process it started gone.  A test that
uses it must run under pytest-asyncio (`asyncio_mode = "auto"`, or marked
`@pytest.mark.asyncio`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from replica.testing.cluster import ProxiedCluster, cluster

ClusterFactory = Callable[..., Awaitable[ProxiedCluster]]

try:
    from pytest_asyncio import fixture as async_fixture
except ImportError:  # without pytest-asyncio the fixture cannot run, but pytest still loads
    from pytest import fixture as async_fixture  # type: ignore[no-redef]


@async_fixture
async def replica_cluster() -> AsyncIterator[ClusterFactory]:
    """Start clusters: `await replica_cluster(n=3, gossip_interval_ms=50, memory=False, ...)`."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(n: int = 3, **options: Any) -> ProxiedCluster:
            return await stack.enter_async_context(cluster(n, **options))

        yield start
