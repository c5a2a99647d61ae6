"""The PN-counter on three real nodes: additions on both sides of a partition sum after
the heal, and a kill -9 loses none that was acknowledged."""

from __future__ import annotations

from typing import Any

from tests.harness import ProxiedCluster, eventually, proxied_cluster

KEY = "visits"


async def totals(cluster: ProxiedCluster) -> dict[str, int]:
    replies = await cluster.request_each({"type": "counter_read", "key": KEY})
    return {node: reply["value"] for node, reply in replies.items()}


def all_equal(expected: int) -> Any:
    def holds(seen: dict[str, int]) -> bool:
        return all(value == expected for value in seen.values())

    return holds


async def add(cluster: ProxiedCluster, node: str, delta: int) -> int:
    reply = await cluster.request(node, {"type": "counter_add", "key": KEY, "delta": delta})
    assert reply["type"] == "counter_add_ok", reply
    value: int = reply["value"]
    return value


async def test_additions_on_both_sides_of_a_partition_sum_on_every_node() -> None:
    async with proxied_cluster(("n1", "n2", "n3"), gossip_interval_ms=50) as cluster:
        await add(cluster, "n2", 100)
        await eventually(lambda: totals(cluster), all_equal(100), "every node sees 100")
        await cluster.partition([{"n1"}, {"n2", "n3"}])
        assert await add(cluster, "n1", 5) == 105
        assert await add(cluster, "n1", -2) == 103
        assert await add(cluster, "n2", 10) == 110
        assert await add(cluster, "n3", -30) in (70, 80)  # n2's +10 may not be there yet
        await eventually(
            lambda: totals(cluster),
            lambda seen: seen == {"n1": 103, "n2": 80, "n3": 80},
            "each side sees only its own additions",
        )
        await cluster.heal_all()
        await eventually(lambda: totals(cluster), all_equal(83), "every node sees the sum")
        status = (await cluster.statuses())["n3"]
        assert status["keys"]["counter"] == 1, status


async def test_a_kill_9_and_restart_keeps_the_acknowledged_total() -> None:
    async with proxied_cluster(("n1", "n2", "n3"), gossip_interval_ms=50) as cluster:
        await cluster.partition([{"n1"}, {"n2", "n3"}])  # only n1's disk holds these
        for delta in (7, 8, -5, 1000):
            await add(cluster, "n1", delta)
        await cluster.kill("n1")
        await cluster.restart("n1", wipe=False)
        assert (await totals(cluster))["n1"] == 1010
        assert await add(cluster, "n1", 1) == 1011  # under its new actor, nothing lost
        await cluster.heal_all()
        await eventually(lambda: totals(cluster), all_equal(1011), "every node sees 1011")
