"""Deletes on real nodes: tombstones replicate like writes, survive restarts, and never resurrect.

Each scenario runs three `replica serve` processes behind link proxies: a
delete on one side of a partition meets the other side's writes at the heal,
and every node must end with the write and without the deleted value.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from replica.testing.client import Body
from tests.harness import ProxiedCluster, ReplicaError, eventually, proxied_cluster

IDS = ("n1", "n2", "n3")


async def mv_values(cluster: ProxiedCluster, key: str) -> dict[str, list[Any]]:
    replies = await cluster.request_each({"type": "mv_read", "key": key})
    return {node: sorted(v["value"] for v in reply["values"]) for node, reply in replies.items()}


async def tombstones(cluster: ProxiedCluster) -> dict[str, dict[str, int]]:
    return {node: status["tombstones"] for node, status in (await cluster.statuses()).items()}


def everywhere(expected: Any) -> Any:
    def holds(seen: dict[str, Any]) -> bool:
        return all(value == expected for value in seen.values())

    return holds


async def ok(cluster: ProxiedCluster, node: str, body: Body) -> Body:
    reply = await cluster.request(node, body)
    assert reply["type"] == f"{body['type']}_ok", reply
    return reply


async def test_a_delete_concurrent_with_a_write_leaves_only_the_write_after_the_heal() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        await ok(cluster, "n1", {"type": "mv_write", "key": "cart", "value": "milk"})
        await eventually(lambda: mv_values(cluster, "cart"), everywhere(["milk"]), "milk spread")
        await cluster.partition([{"n1"}, {"n2", "n3"}])
        seen = await ok(cluster, "n1", {"type": "mv_read", "key": "cart"})
        deleted = await ok(
            cluster, "n1", {"type": "mv_delete", "key": "cart", "context": seen["context"]}
        )
        assert deleted["values"] == []
        assert deleted["context"] == seen["context"]  # the deleted dot stays covered
        # n2 writes without having seen milk: concurrent with the delete, it must survive it
        await ok(cluster, "n2", {"type": "mv_write", "key": "cart", "value": "eggs", "context": {}})
        await eventually(
            lambda: mv_values(cluster, "cart"),
            lambda seen: seen == {"n1": [], "n2": ["eggs", "milk"], "n3": ["eggs", "milk"]},
            "each side sees only its own change",
        )
        await cluster.heal_all()
        await eventually(lambda: mv_values(cluster, "cart"), everywhere(["eggs"]), "only eggs")
        # eggs had seen nothing, so the tombstone is still needed beside it
        await eventually(
            lambda: tombstones(cluster), everywhere({"mv": 1, "kv": 0, "lww": 0, "mvcc": 0})
        )


async def test_a_tombstone_survives_restarts_until_every_node_holds_it_then_goes() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        await ok(cluster, "n1", {"type": "mv_write", "key": "k", "value": 1})
        await ok(cluster, "n2", {"type": "mv_write", "key": "k", "value": 2, "context": {}})
        await eventually(lambda: mv_values(cluster, "k"), everywhere([1, 2]), "both spread")
        await cluster.wait_quiet()
        await cluster.kill("n3")  # holds collection back, and keeps 1 and 2 on its disk
        seen = await ok(cluster, "n1", {"type": "mv_read", "key": "k"})
        await ok(cluster, "n1", {"type": "mv_delete", "key": "k", "context": seen["context"]})
        up = ("n1", "n2")

        async def up_values() -> dict[str, list[Any]]:
            replies = {n: await ok(cluster, n, {"type": "mv_read", "key": "k"}) for n in up}
            return {n: [v["value"] for v in reply["values"]] for n, reply in replies.items()}

        await eventually(up_values, everywhere([]), "the delete spread to n2")
        for node in up:
            await cluster.kill(node)
        for node in up:
            await cluster.restart(node)
        after = {node: await ok(cluster, node, {"type": "mv_read", "key": "k"}) for node in up}
        assert all(r["values"] == [] and r["context"] == seen["context"] for r in after.values())
        statuses = {node: await cluster.request(node, {"type": "status"}) for node in up}
        assert all(s["tombstones"]["mv"] == 1 for s in statuses.values()), statuses
        await cluster.restart("n3")
        await eventually(lambda: mv_values(cluster, "k"), everywhere([]), "n3 took the delete")
        await eventually(
            lambda: tombstones(cluster), everywhere({"mv": 0, "kv": 0, "lww": 0, "mvcc": 0})
        )
        # dropped: a write with the deleted key's context stands alone, as one with none would
        written = await ok(
            cluster, "n1", {"type": "mv_write", "key": "k", "value": 3, "context": seen["context"]}
        )
        assert [v["value"] for v in written["values"]] == [3]
        await eventually(lambda: mv_values(cluster, "k"), everywhere([3]), "the new value spread")


async def lww_reads(cluster: ProxiedCluster, key: str) -> dict[str, Any]:
    replies = await cluster.request_each({"type": "lww_read", "key": key})
    return {n: r.get("value", r.get("code")) for n, r in replies.items()}


async def test_an_lww_tombstone_wins_over_older_writes_and_loses_to_newer_ones() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        key = "flag"
        await ok(cluster, "n1", {"type": "lww_write", "key": key, "value": "on", "timestamp": 100})
        await ok(cluster, "n2", {"type": "lww_delete", "key": key, "timestamp": 150})
        await ok(cluster, "n3", {"type": "lww_write", "key": key, "value": "x", "timestamp": 120})
        await eventually(lambda: lww_reads(cluster, key), everywhere(20), "deleted everywhere")
        # holding only its tombstone, the key is dropped once every node holds that
        await eventually(
            lambda: tombstones(cluster), everywhere({"mv": 0, "kv": 0, "lww": 0, "mvcc": 0})
        )
        assert await lww_reads(cluster, key) == {n: 20 for n in IDS}
        await ok(
            cluster, "n3", {"type": "lww_write", "key": key, "value": "back", "timestamp": 200}
        )
        await eventually(lambda: lww_reads(cluster, key), everywhere("back"), "the newer write")
        # without a timestamp the node's clock stamps the tombstone, above every earlier write
        deleted = await ok(cluster, "n1", {"type": "lww_delete", "key": key})
        assert deleted["timestamp"] > 200 and deleted["replica"] == "n1"
        await eventually(lambda: lww_reads(cluster, key), everywhere(20), "deleted again")


async def mvcc_reads(cluster: ProxiedCluster, key: str, at: int | None) -> dict[str, Any]:
    body: Body = {"type": "mvcc_get", "key": key}
    if at is not None:
        body["read_timestamp"] = at
    replies = await cluster.request_each(body)
    return {n: r.get("value", r.get("code")) for n, r in replies.items()}


async def test_an_mvcc_tombstone_hides_the_key_from_its_timestamp_on() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        key = "x"
        await ok(cluster, "n1", {"type": "mvcc_put", "key": key, "value": "v1", "timestamp": 100})
        await eventually(lambda: mvcc_reads(cluster, key, None), everywhere("v1"), "v1 spread")
        deleted = await ok(cluster, "n2", {"type": "mvcc_delete", "key": key, "timestamp": 200})
        assert deleted == {**deleted, "version": 2, "timestamp": 200}
        await eventually(lambda: mvcc_reads(cluster, key, None), everywhere(20), "deleted")
        assert await mvcc_reads(cluster, key, 150) == {n: "v1" for n in IDS}
        assert await mvcc_reads(cluster, key, 250) == {n: 20 for n in IDS}
        snapshot = await ok(
            cluster, "n3", {"type": "mvcc_snapshot", "keys": [key], "read_timestamp": 250}
        )
        assert snapshot["values"] == {key: None}
        late = await cluster.request("n3", {"type": "mvcc_delete", "key": key, "timestamp": 150})
        assert late["type"] == "error" and late["code"] == 30, late
        assert all(t["mvcc"] == 1 for t in (await tombstones(cluster)).values())
        await ok(cluster, "n3", {"type": "mvcc_put", "key": key, "value": "v3", "timestamp": 300})
        await eventually(lambda: mvcc_reads(cluster, key, None), everywhere("v3"), "v3 spread")
        assert await mvcc_reads(cluster, key, 250) == {n: 20 for n in IDS}


async def kv_values(cluster: ProxiedCluster, key: str) -> dict[str, list[Any]]:
    replies = await cluster.request_each({"type": "kv_get", "key": key})
    return {n: sorted(s["value"] for s in r["values"]) for n, r in replies.items()}


async def test_a_kv_delete_is_not_undone_by_a_node_that_still_holds_the_sibling() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        key = "user"
        await ok(cluster, "n1", {"type": "kv_put", "key": key, "value": "a", "clock": [1, 0]})
        await ok(cluster, "n2", {"type": "kv_put", "key": key, "value": "b", "clock": [0, 1]})
        await eventually(lambda: kv_values(cluster, key), everywhere(["a", "b"]), "both spread")
        await cluster.partition([{"n1"}, {"n2", "n3"}])
        stale = await ok(cluster, "n2", {"type": "kv_delete", "key": key, "clock": [0, 1]})
        assert stale == {**stale, "status": "rejected", "reason": "stale"}
        deleted = await ok(cluster, "n2", {"type": "kv_delete", "key": key, "clock": [2, 0]})
        assert deleted == {**deleted, "status": "deleted", "siblings": 1}
        await eventually(
            lambda: kv_values(cluster, key),
            lambda seen: seen == {"n1": ["a", "b"], "n2": ["b"], "n3": ["b"]},
            "n1 still holds a",
        )
        await cluster.heal_all()
        await eventually(lambda: kv_values(cluster, key), everywhere(["b"]), "a stays deleted")
        again = await ok(cluster, "n1", {"type": "kv_put", "key": key, "value": "a", "clock": [1]})
        assert again["status"] == "rejected", again  # below the tombstone: stale
        assert all(t["kv"] == 1 for t in (await tombstones(cluster)).values())


async def test_a_counter_delete_keeps_an_increment_made_concurrently() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        key = "likes"
        await ok(cluster, "n1", {"type": "counter_add", "key": key, "delta": 10})
        reads = {"type": "counter_read", "key": key}

        async def totals() -> dict[str, int]:
            return {n: r["value"] for n, r in (await cluster.request_each(reads)).items()}

        await eventually(totals, everywhere(10), "10 spread")
        await cluster.partition([{"n1"}, {"n2", "n3"}])
        reset = await ok(cluster, "n1", {"type": "counter_delete", "key": key})
        assert reset["value"] == 0
        await ok(cluster, "n3", {"type": "counter_add", "key": key, "delta": 5})
        await cluster.heal_all()
        await eventually(totals, everywhere(5), "the concurrent increment survives")


async def test_resp_mvreg_del_and_treg_del() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50, resp=True) as cluster:
        host, port = cluster.resp_address("n1")
        r1 = aioredis.Redis(host=host, port=port, protocol=2)
        try:
            assert await r1.execute_command("MVREG", "SET", "m", "apple") == b"OK"
            assert await r1.execute_command("MVREG", "DEL", "m") == b"OK"
            assert await r1.execute_command("MVREG", "GET", "m") == []
            assert await r1.execute_command("TREG", "SET", "t", "a", 10) == b"OK"
            assert await r1.execute_command("TREG", "DEL", "t", 20) == b"OK"
            assert await r1.execute_command("TREG", "GET", "t") == []
            assert await r1.execute_command("TREG", "SET", "t", "old", 15) == b"OK"
            assert await r1.execute_command("TREG", "GET", "t") == []
            with pytest.raises(aioredis.ResponseError):
                await r1.execute_command("TREG", "DEL", "t")
            assert await r1.execute_command("TREG", "SET", "t", "new", 30) == b"OK"
            assert await r1.execute_command("TREG", "GET", "t") == [b"new", 30]
        finally:
            await r1.aclose()
        await eventually(lambda: mv_values(cluster, "m"), everywhere([]), "the MVREG DEL spread")
        await eventually(lambda: lww_reads(cluster, "t"), everywhere("new"), "TREG spread")


BAD_DELETES: list[Body] = [
    {"type": "mv_delete", "context": {}},
    {"type": "mv_delete", "key": "k"},
    {"type": "mv_delete", "key": "k", "context": [1]},
    {"type": "mv_delete", "key": "k", "context": {"n1": -1}},
    {"type": "mv_delete", "key": 5, "context": {}},
    {"type": "kv_delete", "clock": [1]},
    {"type": "kv_delete", "key": "k"},
    {"type": "kv_delete", "key": "k", "clock": {"n1": 1}},
    {"type": "kv_delete", "key": "k", "clock": [1, "x"]},
    {"type": "lww_delete", "timestamp": 5},
    {"type": "lww_delete", "key": "k", "timestamp": "5"},
    {"type": "lww_delete", "key": "k", "timestamp": -5},
    {"type": "mvcc_delete", "timestamp": 5},
    {"type": "mvcc_delete", "key": "k", "timestamp": 1.5},
    {"type": "counter_delete"},
]


async def test_bad_delete_requests_get_error_12_and_change_nothing() -> None:
    async with proxied_cluster(IDS, gossip_interval_ms=50) as cluster:
        await ok(cluster, "n1", {"type": "mv_write", "key": "k", "value": "v"})
        await ok(cluster, "n1", {"type": "kv_put", "key": "k", "value": "v", "clock": [1]})
        await ok(cluster, "n1", {"type": "lww_write", "key": "k", "value": "v", "timestamp": 1})
        await ok(cluster, "n1", {"type": "mvcc_put", "key": "k", "value": "v", "timestamp": 1})
        reads: list[Body] = [
            {"type": "mv_read", "key": "k"},
            {"type": "kv_get", "key": "k"},
            {"type": "lww_read", "key": "k"},
            {"type": "mvcc_get", "key": "k"},
        ]
        before = [await cluster.request("n1", body) for body in reads]
        status_before = (await cluster.request("n1", {"type": "status"}))["tombstones"]
        for body in BAD_DELETES:
            reply = await cluster.request("n1", body)
            assert reply["type"] == "error" and reply["code"] == 12, (body, reply)
        far = await cluster.request("n1", {"type": "lww_delete", "key": "k", "timestamp": 1 << 62})
        assert far["type"] == "error" and far["code"] == 22, far
        after = [await cluster.request("n1", body) for body in reads]
        strip = ("msg_id", "in_reply_to")
        assert [{k: v for k, v in r.items() if k not in strip} for r in after] == [
            {k: v for k, v in r.items() if k not in strip} for r in before
        ]
        assert (await cluster.request("n1", {"type": "status"}))["tombstones"] == status_before
        with pytest.raises(ReplicaError) as refused:
            client = await cluster.client("n1")
            await client.mv_delete("k", {"n1": "x"})  # type: ignore[dict-item]
        assert refused.value.code == 12
