"""Writes and deletes on both sides of a partition, recorded and checked once healed.

A 3-node cluster is cut into n1 | n2 n3.  On n1's side a client deletes what
everyone had seen (MV, KV, LWW, MVCC, counter); on the other side clients
write concurrently, some with `w: 2`.  After the heal the cluster converges
and `check` passes: the deleted values are gone, the concurrent ones survived.
Without the deletes in the history, the same final state is a lost write:
the delete is what explains it.
"""

from __future__ import annotations

from replica.testing import History, check, cluster, final_read_requests
from replica.testing.recording import final_reads, recording_clients


async def test_writes_and_deletes_on_both_sides_of_a_partition_pass_the_checker() -> None:
    history = History()
    async with cluster(n=3, memory=True) as running:
        async with recording_clients(running, history) as clients:
            n1, n2, n3 = clients["n1"], clients["n2"], clients["n3"]
            await n1.mv_write("cart", "milk")
            await n1.kv_put("shelf", "jam", [1])
            await n1.counter_add("visits", 5)
            await n1.mvcc_put("doc", "v1")
            await running.converged(reads=final_read_requests(history))

            async with running.partitioned([["n1"], ["n2", "n3"]]):
                await n2.call({"type": "mv_write", "key": "cart", "value": "eggs", "context": {}})
                await n3.call({"type": "counter_add", "key": "visits", "delta": 3, "w": 2})
                await n2.kv_put("shelf", "tea", [0, 1])
                await n2.lww_write("motd", "hello")
                await n3.mvcc_put("doc", "v2")

                seen = await n1.mv_read("cart")
                await n1.mv_delete("cart", seen["context"])
                await n1.kv_delete("shelf", [2])
                await n1.call({"type": "counter_delete", "key": "visits"})
                await n1.lww_delete("motd")  # after the write, so above it
                await n1.mvcc_delete("doc")
                await n2.call({"type": "mv_read", "key": "cart", "r": 2})

        await running.converged(reads=final_read_requests(history))
        reads = await final_reads(running, history)

    report = check(history, reads)
    assert report.ok, report.text
    [w2] = [op for op in history.operations if "w" in op.body]
    assert (w2.type, w2.body["w"], w2.ok) == ("counter_add", 2, True)
    deletes = [op for op in history.operations if op.type.endswith("_delete")]
    assert len(deletes) == 5 and all(op.ok for op in deletes)
    shown = {
        (r.node, r.request["type"]): r.reply for r in reads if "read_timestamp" not in r.request
    }
    for node in ("n1", "n2", "n3"):
        assert [s["value"] for s in shown[(node, "mv_read")]["values"]] == ["eggs"]
        assert [s["value"] for s in shown[(node, "kv_get")]["values"]] == ["tea"]
        assert shown[(node, "counter_read")]["value"] == 3
        assert shown[(node, "lww_read")]["code"] == 20

    without = History()
    without.operations = [op for op in history.operations if not op.type.endswith("_delete")]
    lost = check(without, reads)
    assert {v.kind for v in lost.violations} >= {"lost write", "wrong total"}, lost.text
