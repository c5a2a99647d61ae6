"""No dot is ever issued twice: a write that was never durable never leaves its node, and a
node that restarts after kill -9 writes under a new incarnation of its actor.

The scenario is the one a hung disk makes (Riak's KV679): n1's log writer is
stopped (SIGSTOP), a write to n1 waits for a commit that cannot finish, n1 is
killed, restarts, and takes a new write of the same key.  If the unacknowledged
write had reached a peer and the restarted node counted from its durable state
under the same actor, the acknowledged write would get the same dot as the lost
one and every node would keep the lost value instead (docs/durability.md, D2
and D3).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from replica.testing import helper_pids
from tests.harness import JsonClient, ProxiedCluster, eventually, proxied_cluster, wait_unlocked
from tests.test_cluster import NODES, flap_links

KEY = "K"
UNDURABLE_WINDOW_S = 1.0  # twenty 50 ms gossip ticks: the old code shipped the write within one


async def values_everywhere(cluster: ProxiedCluster) -> dict[str, list[Any]]:
    views = await cluster.request_each({"type": "mv_read", "key": KEY})
    return {
        node: sorted(entry["value"] for entry in view["values"]) for node, view in views.items()
    }


async def never_leaves_n1(cluster: ProxiedCluster, value: str) -> None:
    """For UNDURABLE_WINDOW_S, no peer of n1 shows `value` (asserting an absence needs a window)."""
    deadline = time.monotonic() + UNDURABLE_WINDOW_S
    while time.monotonic() < deadline:
        for peer in ("n2", "n3"):
            reply = await cluster.request(peer, {"type": "mv_read", "key": KEY})
            shown = [entry["value"] for entry in reply["values"]]
            assert value not in shown, f"{peer} got a write n1 never made durable: {reply}"
        await asyncio.sleep(0.05)


async def hung_disk_then_kill_9(cluster: ProxiedCluster) -> tuple[str, list[Any]]:
    """Run the scenario; returns n1's actor before the crash and the acknowledged write's dot."""
    data_dir = cluster.directory / "data" / "n1"
    before = (await cluster.request("n1", {"type": "status"}))["actor"]
    (writer,) = helper_pids(data_dir)["replica.durable.log_writer"]
    os.kill(writer, signal.SIGSTOP)
    stuck = await JsonClient.connect("127.0.0.1", cluster.ports["n1"])
    try:
        await stuck.send({"type": "mv_write", "key": KEY, "value": "b-unacked", "msg_id": 1})
        await never_leaves_n1(cluster, "b-unacked")
    finally:
        await stuck.close()
        await cluster.kill("n1")
        for pid in helper_pids(data_dir)["replica.durable.log_writer"]:
            os.kill(pid, signal.SIGKILL)  # a stopped process still takes SIGKILL
    await asyncio.to_thread(wait_unlocked, data_dir)
    await cluster.restart("n1", wipe=False)
    reply = await cluster.request("n1", {"type": "mv_write", "key": KEY, "value": "a-acked"})
    assert reply["type"] == "mv_write_ok", reply
    (own,) = [entry for entry in reply["values"] if entry["value"] == "a-acked"]
    return before, own["dot"]


def converged_with(value: str):  # type: ignore[no-untyped-def]
    def holds(views: dict[str, list[Any]]) -> bool:
        first = views["n1"]
        return value in first and all(view == first for view in views.values())

    return holds


async def test_an_acknowledged_write_after_a_hung_disk_and_kill_9_reaches_every_node() -> None:
    async with proxied_cluster(NODES, gossip_interval_ms=50) as cluster:
        before, dot = await hung_disk_then_kill_9(cluster)
        assert dot[0] != before, f"the restarted node reused its actor {before}: dot {dot}"
        views = await eventually(
            lambda: values_everywhere(cluster),
            converged_with("a-acked"),
            "every node shows the acknowledged write",
        )
        assert "b-unacked" not in views["n1"], views


async def test_the_hung_disk_scenario_holds_under_flapping_partitions() -> None:
    async with proxied_cluster(NODES, gossip_interval_ms=50) as cluster:
        await cluster.request("n2", {"type": "mv_write", "key": KEY, "value": "from-n2"})
        stop_at = time.monotonic() + 6.0
        cuts: list[set[tuple[str, str]]] = []
        nemesis = asyncio.create_task(flap_links(cluster, 20261204, stop_at, cuts))
        try:
            before, dot = await hung_disk_then_kill_9(cluster)
        finally:
            await nemesis
        assert any(cuts), cuts
        assert dot[0] != before, f"the restarted node reused its actor {before}: dot {dot}"
        await cluster.heal_all()
        await eventually(
            lambda: values_everywhere(cluster),
            converged_with("a-acked"),
            "every node shows the acknowledged write",
        )
