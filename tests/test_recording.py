"""The recording client on real nodes: each outcome lands in the history as what it was.

An acknowledged request is ok with its reply, an error reply fails definitely
(or not, for codes 0 and 13), and a request that gets no reply, because its
node is paused past the timeout or killed while it waits, is unknown.  The
history those make is then checked against the cluster like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from replica.testing import History, ProxiedCluster, ReplicaError, check, cluster, eventually
from replica.testing.history import Outcome
from replica.testing.recording import final_reads, recording_clients


@pytest.fixture
async def running() -> AsyncIterator[ProxiedCluster]:
    async with cluster(n=2, memory=True) as started:
        yield started


async def test_acknowledged_requests_are_ok_with_their_reply(running: ProxiedCluster) -> None:
    history = History()
    async with recording_clients(running, history) as clients:
        written = await clients["n1"].mv_write("cart", ["milk"])
        added = await clients["n1"].call({"type": "counter_add", "key": "visits", "delta": 2})
    [write, add] = history.operations
    assert (write.node, write.type, write.key) == ("n1", "mv_write", "cart")
    assert write.body == {"type": "mv_write", "key": "cart", "value": ["milk"]}
    assert write.ok and write.reply == written
    assert add.ok and add.reply == added


async def test_error_replies_fail_definitely_by_their_code(running: ProxiedCluster) -> None:
    history = History()
    async with recording_clients(running, history, ["n1"]) as clients:
        with pytest.raises(ReplicaError) as raised:
            await clients["n1"].mv_write("cart", ["milk"], context={"n1": -1})
        reply = await clients["n1"].call({"type": "no_such_type"})
    assert raised.value.code == 12
    assert reply["type"] == "error" and reply["code"] == 10
    [bad_context, unknown_type] = history.operations
    assert (bad_context.outcome, bad_context.code) == (Outcome.FAILED, 12)
    assert (unknown_type.outcome, unknown_type.code) == (Outcome.FAILED, 10)
    assert check(history, await final_reads(running, history)).ok


async def test_a_request_to_a_paused_node_past_its_timeout_is_unknown(
    running: ProxiedCluster,
) -> None:
    history = History()
    async with recording_clients(running, history) as clients:
        await running.pause("n1")
        try:
            with pytest.raises(TimeoutError):
                late = {"type": "mv_write", "key": "k", "value": "late"}
                await clients["n1"].call(late, timeout=0.5)
        finally:
            await running.resume("n1")
        [write] = history.operations
        assert write.outcome is Outcome.UNKNOWN and "TimeoutError" in write.text

        # The write did happen once the node woke: the checker accepts it, unknown as it was.
        await eventually(
            lambda: running.request("n2", {"type": "mv_read", "key": "k"}),
            lambda r: len(r["values"]) == 1,
            "the late write at n2",
        )
        report = check(history, await final_reads(running, history))
        assert report.ok, report.text
        # The connection still serves: the late reply is set aside, not taken for this one.
        assert (await clients["n1"].mv_read("k"))["values"][0]["value"] == "late"


async def test_a_request_whose_node_is_killed_while_it_waits_is_unknown(
    running: ProxiedCluster,
) -> None:
    history = History()
    async with recording_clients(running, history, ["n1"]) as clients:
        n1 = clients["n1"]
        await running.pause("n1")
        waiting = asyncio.create_task(n1.mv_write("k", "maybe"))

        async def recorded() -> int:
            return len(history.operations)

        await eventually(recorded, lambda n: n == 1, "the request recorded")
        await running.kill("n1")
        with pytest.raises(ConnectionError):
            await waiting
        [write] = history.operations
        assert write.outcome is Outcome.UNKNOWN

        # Later requests on the lost connection were never sent: raised, not recorded.
        with pytest.raises(ConnectionError):
            await n1.mv_read("k")
        assert len(history.operations) == 1
