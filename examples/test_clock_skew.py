"""A node whose clock runs ahead wins last-writer-wins against writes made after its own.

Shows: `node_env` giving one node `REPLICA_CLOCK_OFFSET_MS` (its hybrid clock
reads the wall clock plus the offset; the machine's clock is untouched), and
what that means for an LWW register: of two concurrent writes, the greater
timestamp wins everywhere, whatever happened first in real time.  Once a node
has seen the fast clock's timestamps, its own later writes issue above them.
"""

import pytest

pytestmark = pytest.mark.asyncio

AHEAD_MS = 30_000  # within the default max_clock_skew_ms (60 s): accepted by the others
READ = {"type": "lww_read", "key": "motd"}


async def test_a_clock_ahead_wins_concurrent_writes_made_later(replica_cluster):
    cluster = await replica_cluster(
        n=3, node_env={"n3": {"REPLICA_CLOCK_OFFSET_MS": str(AHEAD_MS)}}
    )
    n1, n3 = await cluster.client("n1"), await cluster.client("n3")

    async with cluster.partitioned([["n1"], ["n2", "n3"]]):
        early = await n3.lww_write("motd", "written first, on the fast clock")
        late = await n1.lww_write("motd", "written second, on a true clock")
    assert early["timestamp"] > late["timestamp"]

    # Healed: the greater timestamp wins on every node, n1 included.
    answers = await cluster.converged(reads=[READ])
    for reply in answers["answers"][0].values():
        assert reply["value"] == "written first, on the fast clock"

    # n1 has now seen n3's timestamp: its next write issues above it and wins.
    third = "written third, after seeing the fast clock"
    newer = await n1.lww_write("motd", third)
    assert newer["timestamp"] > early["timestamp"]
    answers = await cluster.converged(reads=[READ])
    assert {reply["value"] for reply in answers["answers"][0].values()} == {third}
