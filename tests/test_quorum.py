"""Per-request `w` and `r` on three real nodes: acknowledgements, timeouts, read repair.

Error 11 (too few nodes connected) and error 0 (too few answers in time) mean
"not confirmed", never "not written": every scenario that gets one also checks
that the write arrives everywhere once the fault is gone.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from tests.harness import LOOPBACK, ProxiedCluster, ReplicaError, eventually, proxied_cluster

IDS = ("n1", "n2", "n3")
TIMEOUT_MS = 1000
QUIET_GOSSIP_MS = 10_000  # no gossip tick within a scenario: only quorums move data


async def values_at(cluster: ProxiedCluster, node: str, key: str, r: Any = None) -> list[Any]:
    client = await cluster.client(node)
    reply = await client.mv_read(key, r=r)
    return [sibling["value"] for sibling in reply["values"]]


async def everywhere(cluster: ProxiedCluster, key: str) -> dict[str, list[Any]]:
    return {node: await values_at(cluster, node, key) for node in IDS}


def all_hold(value: Any) -> Any:
    return lambda seen: all(values == [value] for values in seen.values())


async def test_a_quorum_write_succeeds_on_the_majority_side_and_fails_on_the_minority() -> None:
    async with proxied_cluster(IDS, request_timeout_ms=TIMEOUT_MS) as cluster:
        await cluster.wait_quiet()
        async with cluster.partitioned([{"n1"}, {"n2", "n3"}]):
            n2 = await cluster.client("n2")
            assert (await n2.mv_write("majority", "m", w="quorum"))["type"] == "mv_write_ok"
            n1 = await cluster.client("n1")
            started = time.monotonic()
            with pytest.raises(ReplicaError) as failed:
                await n1.mv_write("minority", "x", w=2)
            assert failed.value.code in (0, 11), failed.value
            assert time.monotonic() - started < TIMEOUT_MS / 1000 + 1.0
            assert await values_at(cluster, "n1", "minority") == ["x"]  # kept there
        await eventually(lambda: everywhere(cluster, "minority"), all_hold("x"), "x spread")
        await eventually(lambda: everywhere(cluster, "majority"), all_hold("m"), "m spread")


async def test_w_all_with_a_paused_node_times_out_naming_two_of_three() -> None:
    async with proxied_cluster(IDS, request_timeout_ms=TIMEOUT_MS) as cluster:
        await cluster.wait_quiet()
        await cluster.pause("n3")
        try:
            n1 = await cluster.client("n1")
            with pytest.raises(ReplicaError) as failed:
                await n1.mv_write("k", "all", w="all")
            assert failed.value.code == 0, failed.value
            assert "2 of 3" in failed.value.text, failed.value.text
            status = await n1.status()
            assert status["quorums"]["timeouts"] == 1, status["quorums"]
        finally:
            await cluster.resume("n3")
        await eventually(lambda: values_at(cluster, "n3", "k"), lambda v: v == ["all"], "n3")


async def test_reads_at_r2_find_a_write_gossip_has_not_carried_and_repair_the_reader() -> None:
    async with proxied_cluster(
        IDS, gossip_interval_ms=QUIET_GOSSIP_MS, request_timeout_ms=TIMEOUT_MS
    ) as cluster:
        await cluster.wait_quiet()
        n1, n2 = await cluster.client("n1"), await cluster.client("n2")
        await n1.mv_write("pushed", "a", w=1)
        async with cluster.partitioned([{"n1", "n2"}, {"n3"}]):  # n1 is the peer that answers
            assert await values_at(cluster, "n2", "pushed", r=2) == ["a"]
            assert await values_at(cluster, "n2", "pushed", r=1) == ["a"]
        await cluster.wait_quiet()
        await n1.mv_write("acknowledged", "b", w="all")
        assert await values_at(cluster, "n2", "acknowledged", r=1) == ["b"]
        assert await values_at(cluster, "n3", "acknowledged", r=1) == ["b"]
        assert (await n2.status())["quorums"]["unavailable"] == 0


async def test_read_repair_sends_the_merged_state_to_a_peer_that_answered_with_less() -> None:
    async with proxied_cluster(
        IDS, gossip_interval_ms=QUIET_GOSSIP_MS, request_timeout_ms=TIMEOUT_MS
    ) as cluster:
        await cluster.wait_quiet()
        n1 = await cluster.client("n1")
        await n1.mv_write("stale", "v", w=1)
        assert await values_at(cluster, "n2", "stale", r="all") == ["v"]
        await eventually(
            lambda: values_at(cluster, "n3", "stale"), lambda v: v == ["v"], "n3 repaired"
        )
        assert (await (await cluster.client("n2")).status())["quorums"]["read_repairs"] >= 1


async def test_a_w2_write_survives_its_coordinator_killed_and_wiped() -> None:
    async with proxied_cluster(
        IDS, gossip_interval_ms=QUIET_GOSSIP_MS, request_timeout_ms=TIMEOUT_MS
    ) as cluster:
        await cluster.wait_quiet()
        n1 = await cluster.client("n1")
        await n1.mv_write("survivor", "s", w=2)
        await cluster.kill("n1")
        await asyncio.to_thread(cluster.nodes["n1"].wipe)
        for node in ("n2", "n3"):
            assert await values_at(cluster, node, "survivor", r=2) == ["s"], node


async def test_other_types_take_w_and_r() -> None:
    async with proxied_cluster(IDS, request_timeout_ms=TIMEOUT_MS) as cluster:
        await cluster.wait_quiet()
        n1, n3 = await cluster.client("n1"), await cluster.client("n3")
        await n1.lww_write("l", "x", w="all")
        assert (await n3.lww_read("l"))["value"] == "x"
        await n1.counter_add("c", 5, w=3)
        assert (await n3.counter_read("c"))["value"] == 5
        await n1.kv_put("kv", "v", [1, 0, 0], w="all")
        assert [s["value"] for s in (await n3.kv_get("kv", r=2))["values"]] == ["v"]
        await n1.mvcc_put("m", "v", w="quorum")
        assert (await n3.mvcc_get("m", r="all"))["value"] == "v"


async def test_deletes_take_w_and_a_delete_of_nothing_is_answered_at_once() -> None:
    async with proxied_cluster(
        IDS, request_timeout_ms=TIMEOUT_MS, gossip_interval_ms=QUIET_GOSSIP_MS
    ) as cluster:
        await cluster.wait_quiet()
        n1, n3 = await cluster.client("n1"), await cluster.client("n3")
        written = await n1.mv_write("k", "v", w="all")
        deleted = await n1.call(
            {"type": "mv_delete", "key": "k", "context": written["context"], "w": "all"}
        )
        assert deleted["type"] == "mv_delete_ok", deleted
        assert await values_at(cluster, "n3", "k") == []  # there at once: no gossip tick ran
        await n1.lww_write("l", "x", w="all")
        await n1.call({"type": "lww_delete", "key": "l", "w": "all"})
        assert (await n3.call({"type": "lww_read", "key": "l"}))["code"] == 20
        started = time.monotonic()
        for body in (
            {"type": "mv_delete", "key": "absent", "context": {}},
            {"type": "counter_delete", "key": "absent"},
        ):
            reply = await n1.call({**body, "w": "all"})  # nothing stored: nothing to wait for
            assert reply["type"].endswith("_delete_ok"), reply
        assert time.monotonic() - started < TIMEOUT_MS / 1000


@pytest.mark.parametrize(
    ("field", "value"),
    [("w", 0), ("w", 4), ("w", "most"), ("w", True), ("w", 2.0), ("w", None), ("r", -1)],
)
async def test_a_bad_w_or_r_is_error_12_and_writes_nothing(field: str, value: Any) -> None:
    async with proxied_cluster(IDS, memory=True) as cluster:
        n1 = await cluster.client("n1")
        kind = "mv_write" if field == "w" else "mv_read"
        reply = await n1.call({"type": kind, "key": "k", "value": 1, field: value})
        assert reply["type"] == "error" and reply["code"] == 12, reply
        assert repr(field) in reply["text"], reply
        assert await values_at(cluster, "n1", "k") == []


async def test_a_quorum_read_request_from_a_stranger_is_refused_with_1000() -> None:
    async with proxied_cluster(IDS, memory=True) as cluster:
        n1 = await cluster.client("n1")
        reply = await n1.call({"type": "quorum_read", "keyspace": "mv", "key": "k"})
        assert reply["type"] == "error" and reply["code"] == 1000, reply


async def test_pipelined_quorum_writes_are_answered_in_request_order() -> None:
    async with proxied_cluster(IDS, request_timeout_ms=TIMEOUT_MS) as cluster:
        await cluster.wait_quiet()
        client = await cluster.connect("n1")
        try:
            bodies = [
                {"type": "mv_write", "key": f"p{i}", "value": i, "msg_id": i + 1}
                | ({"w": "all"} if i % 2 else {})
                for i in range(40)
            ]
            for body in bodies:
                await client.send(body)
            replies = [await client.read_json() for _ in bodies]
            assert [r["in_reply_to"] for r in replies] == [b["msg_id"] for b in bodies]
            assert all(r["type"] == "mv_write_ok" for r in replies), replies
        finally:
            await client.close()


async def test_resp_waits_for_w_all_from_the_cluster_file() -> None:
    async with proxied_cluster(IDS, resp=True, w="all", request_timeout_ms=TIMEOUT_MS) as cluster:
        await cluster.wait_quiet()
        host, port = cluster.resp_address("n1")
        redis = aioredis.Redis(host=host, port=port, protocol=2)
        try:
            assert await redis.execute_command("MVREG", "SET", "r", "v") in (b"OK", "OK", True)
            assert await values_at(cluster, "n3", "r") == ["v"]
            await cluster.pause("n3")
            try:
                with pytest.raises(ResponseError, match="2 of 3"):
                    await redis.execute_command("MVREG", "SET", "r", "w")
            finally:
                await cluster.resume("n3")
        finally:
            await redis.aclose()
        await eventually(lambda: values_at(cluster, "n3", "r"), lambda v: v == ["w"], "n3")
        assert host == LOOPBACK


async def test_pipelined_w_all_writes_to_a_paused_peer_stop_being_read() -> None:
    """Writes waiting for their quorum count toward the held-bytes mark: the node stops reading."""
    count, bound = 30_000, 8_000  # two read chunks' worth of lines, well under `count`
    async with proxied_cluster(IDS, request_timeout_ms=5_000) as cluster:
        await cluster.wait_quiet()
        await cluster.pause("n3")
        writer = await cluster.connect("n1")
        try:
            lines = b"".join(
                orjson.dumps(
                    {"type": "mv_write", "key": f"b{i}", "value": i, "w": "all", "msg_id": i + 1}
                )
                + b"\n"
                for i in range(count)
            )
            sending = asyncio.create_task(writer.send_raw(lines))
            n1 = await cluster.client("n1")

            async def waiting() -> int:
                return int((await n1.status())["quorums"]["writes_waiting"])

            await eventually(waiting, lambda n: n >= 256, "writes wait for n3")
            seen = []
            for _ in range(10):  # samples over half a second: nothing releases them before 5 s
                seen.append(await waiting())
                await asyncio.sleep(0.05)
            assert max(seen) < bound, seen  # the rest wait in socket buffers, unread
            await cluster.resume("n3")
            await asyncio.wait_for(sending, 60)
            for i in range(count):
                reply = await writer.read_json(timeout=30)
                assert reply["in_reply_to"] == i + 1, reply
                assert reply["type"] == "mv_write_ok" or reply["code"] == 0, reply
        finally:
            await cluster.resume("n3")
            await writer.close()
