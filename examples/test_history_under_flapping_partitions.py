"""Clients on every node write while partitions come and go; the history checker judges the end.

Shows: a `History` filled by recording clients (every request and what came
back), a seeded `Nemesis` flapping partition shapes while writers run (its
seed is printed: rerun with `seed=` to replay a failure), then healing,
waiting for convergence and `check`: every acknowledged write is visible or
was superseded by a write or a delete whose context had seen it, no deleted
value comes back, no value appears that nobody wrote, and every node agrees.
The report names the operations behind any violation.
"""

import asyncio
import itertools

import pytest

from replica.testing import (
    History,
    Nemesis,
    check,
    final_read_requests,
    final_reads,
    recording_clients,
)

pytestmark = pytest.mark.asyncio

KEYS = ("cart", "profile", "settings")


async def write_until(stop, node, client):
    """MV writes and deletes (every third op reads first and writes or deletes with its context),
    counter additions, LWW writes and deletes."""
    for i in itertools.count():
        if stop.is_set():
            return
        key = KEYS[i % len(KEYS)]
        if i % 3 == 0:
            read = await client.mv_read(key)
            if i % 5 == 0:
                await client.mv_delete(key, read["context"])
            else:
                await client.mv_write(key, f"{node}-{i}", context=read["context"])
        else:
            await client.mv_write(key, f"{node}-{i}")
        await client.counter_add("visits", 1)
        if i % 7 == 0:
            await client.lww_delete("motd")
        else:
            await client.lww_write("motd", f"{node}-{i}")
        await asyncio.sleep(0.02)  # pacing the workload, not waiting for anything


async def test_writes_under_flapping_partitions_pass_the_history_checker(replica_cluster):
    cluster = await replica_cluster(n=3)
    history = History()

    async with recording_clients(cluster, history) as clients:
        stop = asyncio.Event()
        writers = [
            asyncio.create_task(write_until(stop, node, client)) for node, client in clients.items()
        ]
        nemesis = Nemesis(cluster, interval=0.5, duration=4.0)
        await nemesis.run()  # 4 s of partitions flapping under the writers, then all healed
        stop.set()
        await asyncio.gather(*writers)

    await cluster.converged(reads=final_read_requests(history))
    report = check(history, await final_reads(cluster, history))
    assert report.ok, f"{report.text}\n{nemesis.text()}"
    assert report.operations > 100
