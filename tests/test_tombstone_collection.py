"""Tombstone collection on real nodes: a tombstone goes only once every node holds it.

Three `replica serve` processes behind link proxies.  A key that holds only a
tombstone is dropped by each node once every other node has confirmed it;
a node that is down or paused holds every collection back, and a node that
comes back with the deleted value on its disk gets the delete, never the
other way round.  After a key is dropped, a node's new dots stay above the
ones its tombstone covered, so an old context cannot supersede a new write.
"""

from __future__ import annotations

from typing import Any

from replica.testing.client import Body
from tests.harness import ProxiedCluster, eventually, proxied_cluster

IDS = ("n1", "n2", "n3")
NONE = {"mv": 0, "kv": 0, "lww": 0, "mvcc": 0}


async def ok(cluster: ProxiedCluster, node: str, body: Body) -> Body:
    reply = await cluster.request(node, body)
    assert reply["type"] == f"{body['type']}_ok", reply
    return reply


async def mv_values(cluster: ProxiedCluster, key: str, nodes: Any = IDS) -> dict[str, list[Any]]:
    replies = {node: await cluster.request(node, {"type": "mv_read", "key": key}) for node in nodes}
    return {node: sorted(v["value"] for v in reply["values"]) for node, reply in replies.items()}


async def counts(cluster: ProxiedCluster, field: str, nodes: Any = IDS) -> dict[str, Any]:
    return {node: (await cluster.request(node, {"type": "status"}))[field] for node in nodes}


def everywhere(expected: Any) -> Any:
    return lambda seen: all(value == expected for value in seen.values())


async def ae_rounds(cluster: ProxiedCluster, node: str, peer: str) -> int:
    status = await cluster.request(node, {"type": "status"})
    return next(p["ae_rounds"] for p in status["peers"] if p["id"] == peer)


async def let_time_pass(cluster: ProxiedCluster, pairs: list[tuple[str, str]], rounds: int) -> None:
    """Wait until each node compared digests `rounds` more times with its peer: ample time to
    collect (it takes a few gossip ticks), and asks to confirm repeat every few seconds."""
    start = {pair: await ae_rounds(cluster, *pair) for pair in pairs}

    async def grown() -> dict[tuple[str, str], int]:
        return {pair: await ae_rounds(cluster, *pair) - start[pair] for pair in pairs}

    await eventually(grown, lambda seen: min(seen.values()) >= rounds, "anti-entropy rounds")


async def test_every_type_s_tombstone_is_collected_once_every_node_holds_it() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        await ok(cluster, "n1", {"type": "mv_write", "key": "m", "value": 1})
        await ok(cluster, "n1", {"type": "kv_put", "key": "c", "value": 1, "clock": [1, 0]})
        await ok(cluster, "n1", {"type": "lww_write", "key": "l", "value": 1})
        await ok(cluster, "n1", {"type": "mvcc_put", "key": "v", "value": 1, "timestamp": 100})
        await eventually(lambda: mv_values(cluster, "m"), everywhere([1]), "the write spread")
        seen = await ok(cluster, "n2", {"type": "mv_read", "key": "m"})
        await ok(cluster, "n2", {"type": "mv_delete", "key": "m", "context": seen["context"]})
        await ok(cluster, "n2", {"type": "kv_delete", "key": "c", "clock": [2, 0]})
        await ok(cluster, "n2", {"type": "lww_delete", "key": "l"})
        await ok(cluster, "n3", {"type": "mvcc_delete", "key": "never-written", "timestamp": 200})
        collected = {"mv": 1, "kv": 1, "lww": 1, "mvcc": 1}
        await eventually(
            lambda: counts(cluster, "tombstones_collected"), everywhere(collected), "collected"
        )
        assert await counts(cluster, "tombstones") == {node: NONE for node in IDS}
        assert await counts(cluster, "keys") == {
            node: {"mv": 0, "kv": 0, "mvcc": 1, "lww": 0, "counter": 0} for node in IDS
        }, "only v's versions before its delete are left"
        assert await mv_values(cluster, "m") == {node: [] for node in IDS}
        for node in IDS:
            reply = await cluster.request(node, {"type": "lww_read", "key": "l"})
            assert reply["code"] == 20, reply
        # dropped, a key stays dropped after every node restarts
        await cluster.wait_quiet()
        for node in IDS:
            await cluster.kill(node)
        for node in IDS:
            await cluster.restart(node)
        assert await mv_values(cluster, "m") == {node: [] for node in IDS}
        await let_time_pass(cluster, [("n1", "n2"), ("n2", "n3")], 2)
        assert await counts(cluster, "tombstones") == {node: NONE for node in IDS}


async def test_a_tombstone_stays_while_a_node_is_down_and_goes_after_it_comes_back() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        await ok(cluster, "n1", {"type": "mv_write", "key": "k", "value": "old"})
        await eventually(lambda: mv_values(cluster, "k"), everywhere(["old"]), "old spread")
        await cluster.wait_quiet()
        await cluster.kill("n3")  # its disk keeps "old"
        seen = await ok(cluster, "n1", {"type": "mv_read", "key": "k"})
        await ok(cluster, "n1", {"type": "mv_delete", "key": "k", "context": seen["context"]})
        up = ("n1", "n2")
        await eventually(lambda: mv_values(cluster, "k", up), everywhere([]), "deleted on n1, n2")
        await let_time_pass(cluster, [("n1", "n2"), ("n2", "n1")], 3)
        held = await counts(cluster, "tombstones", up)
        assert all(t["mv"] == 1 for t in held.values()), held
        await cluster.restart("n3")
        await eventually(lambda: mv_values(cluster, "k"), everywhere([]), "n3 took the delete")
        await eventually(
            lambda: counts(cluster, "tombstones_collected"),
            everywhere({"mv": 1, "kv": 0, "lww": 0, "mvcc": 0}),
            "collected once n3 holds it",
        )
        await let_time_pass(cluster, [("n1", "n3"), ("n3", "n2")], 2)
        assert await mv_values(cluster, "k") == {node: [] for node in IDS}, "never back"
        assert await counts(cluster, "tombstones") == {node: NONE for node in IDS}


async def test_a_paused_node_holds_collection_back_until_it_resumes() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        await cluster.wait_quiet()
        await cluster.pause("n3")
        await ok(cluster, "n1", {"type": "lww_write", "key": "f", "value": "on"})
        await ok(cluster, "n1", {"type": "lww_delete", "key": "f"})
        up = ("n1", "n2")
        await eventually(lambda: counts(cluster, "tombstones", up), everywhere({**NONE, "lww": 1}))
        await let_time_pass(cluster, [("n1", "n2"), ("n2", "n1")], 3)
        held = await counts(cluster, "tombstones", up)
        assert all(t["lww"] == 1 for t in held.values()), held
        await cluster.resume("n3")
        await eventually(
            lambda: counts(cluster, "tombstones_collected"),
            everywhere({"mv": 0, "kv": 0, "lww": 1, "mvcc": 0}),
            "collected once n3 answers",
        )


async def test_after_collection_an_old_context_does_not_supersede_a_new_write() -> None:
    """n1's dots for the key reached 3 before the delete; a write there after the key was
    dropped, and n1 restarted cleanly under the same actor, must get a dot above 3, or a
    client still holding the old context would silently supersede it at n2."""
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        context: dict[str, int] = {}
        for value in ("a", "b", "c"):
            written = await ok(
                cluster, "n1", {"type": "mv_write", "key": "k", "value": value, "context": context}
            )
            context = written["context"]
        actor = (await cluster.request("n1", {"type": "status"}))["actor"]
        assert context == {actor: 3}
        await eventually(lambda: mv_values(cluster, "k"), everywhere(["c"]), "c spread")
        await ok(cluster, "n1", {"type": "mv_delete", "key": "k", "context": context})
        await eventually(
            lambda: counts(cluster, "tombstones_collected"),
            everywhere({"mv": 1, "kv": 0, "lww": 0, "mvcc": 0}),
            "collected",
        )
        await cluster.restart("n1")  # a clean stop: the same actor goes on
        assert (await cluster.request("n1", {"type": "status"}))["actor"] == actor
        new = await ok(cluster, "n1", {"type": "mv_write", "key": "k", "value": "new"})
        assert new["context"][actor] > 3, new
        await ok(
            cluster, "n2", {"type": "mv_write", "key": "k", "value": "late", "context": context}
        )
        await eventually(
            lambda: mv_values(cluster, "k"), everywhere(["late", "new"]), "both writes kept"
        )


async def test_in_async_durability_tombstones_are_kept() -> None:
    """A node could confirm a tombstone it has not yet written and then lose it in a crash."""
    async with proxied_cluster(IDS, gossip_interval_ms=50, durability="async") as cluster:
        await ok(cluster, "n1", {"type": "lww_write", "key": "f", "value": "on"})
        await ok(cluster, "n1", {"type": "lww_delete", "key": "f"})
        await eventually(lambda: counts(cluster, "tombstones"), everywhere({**NONE, "lww": 1}))
        await let_time_pass(cluster, [("n1", "n2"), ("n2", "n3"), ("n3", "n1")], 3)
        assert await counts(cluster, "tombstones") == {n: {**NONE, "lww": 1} for n in IDS}
        assert await counts(cluster, "tombstones_collected") == {n: NONE for n in IDS}
