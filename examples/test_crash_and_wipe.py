"""A node killed with -9 keeps every write it acknowledged; a wiped node refills from its peers.

Shows: `kill` (SIGKILL, no shutdown of any kind) and `restart` on the same
data dir, with the node isolated so that what it reads after the restart can
only come from its own disk; then `wipe_and_restart`, an empty data dir that
anti-entropy fills again from the other nodes, and `converged` to wait for it.
"""

import pytest

from replica.testing import eventually

pytestmark = pytest.mark.asyncio

ORDERS = [f"order-{i}" for i in range(5)]
READS = [{"type": "mv_read", "key": key} for key in ORDERS]


async def test_a_killed_node_keeps_its_acknowledged_writes(replica_cluster):
    cluster = await replica_cluster(n=3)  # durable: each node has its own data dir
    await cluster.isolate("n1")
    n1 = await cluster.client("n1")
    for key in ORDERS:
        await n1.mv_write(key, {"item": key, "paid": True})
    await n1.counter_add("orders", len(ORDERS))

    await cluster.kill("n1")  # every write above was acknowledged: it must survive
    await cluster.restart("n1")  # still isolated: nothing can come from the peers
    n1 = await cluster.client("n1")
    for key in ORDERS:
        [sibling] = (await n1.mv_read(key))["values"]
        assert sibling["value"] == {"item": key, "paid": True}
    assert (await n1.counter_read("orders"))["value"] == len(ORDERS)

    await cluster.heal()
    await cluster.converged(reads=READS)


async def test_a_wiped_node_refills_from_its_peers(replica_cluster):
    cluster = await replica_cluster(n=3)
    n1 = await cluster.client("n1")
    for key in ORDERS:
        await n1.mv_write(key, {"item": key})
    await cluster.converged(reads=READS)

    await cluster.wipe_and_restart("n2")  # an empty data dir, as after a lost disk
    n2 = await cluster.client("n2")
    last = await eventually(
        lambda: n2.mv_read(ORDERS[-1]), lambda r: len(r["values"]) == 1, "n2 refilled"
    )
    assert last["values"][0]["value"] == {"item": ORDERS[-1]}
    await cluster.converged(reads=READS)
