"""`Quorums`, on its own: which acknowledgements count for a write, what a read merges."""

from __future__ import annotations

import asyncio
from typing import Any

from replica.crdt.registry import LWW
from replica.keyspaces import Keyspaces
from replica.replication.pending import Pending
from replica.replication.quorum import Quorums

REF = ("lww", "k")


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, peer: str, body: dict[str, Any]) -> bool:
        body["msg_id"] = len(self.sent) + 1
        self.sent.append((peer, body))
        return True


async def test_a_write_counts_acks_of_messages_that_carried_its_key_at_its_seq_or_later() -> None:
    quorums = Quorums(Keyspaces("n1"), Outbox())
    wait = quorums.wait_write(REF, seq=5, needed=2, timeout_ms=10_000)
    quorums.acked("n2", {REF: 4})  # an older state of the key: not the write
    quorums.acked("n3", {("lww", "other"): 9})
    assert not wait.future.done()
    quorums.acked("n2", {REF: 5})
    quorums.acked("n2", {REF: 6})  # the same peer twice counts once
    assert not wait.future.done()
    quorums.acked("n3", {REF: 7})
    assert wait.future.done() and wait.future.result() is None
    assert not quorums.waiting


async def test_a_write_that_misses_its_quorum_says_how_many_of_how_many() -> None:
    quorums = Quorums(Keyspaces("n1"), Outbox())
    wait = quorums.wait_write(REF, seq=1, needed=2, timeout_ms=20)
    quorums.acked("n2", {REF: 1})
    ended = asyncio.Event()
    wait.future.add_done_callback(lambda _: ended.set())
    await asyncio.wait_for(ended.wait(), 5)
    assert wait.future.result() == (
        "2 of 3 replicas acknowledged within 20 ms; the write is kept and will spread"
    )
    assert quorums.counts.timeouts == 1 and not quorums.waiting


async def test_a_read_merges_each_answer_and_repairs_the_peer_that_had_less() -> None:
    keyspaces, outbox = Keyspaces("n1"), Outbox()
    quorums = Quorums(keyspaces, outbox)
    wait = quorums.ask("lww", "k", ["n2", "n3"], needed=2, timeout_ms=10_000)
    assert [(peer, body["type"]) for peer, body in outbox.sent] == [
        ("n2", "quorum_read"),
        ("n3", "quorum_read"),
    ]
    newer = {"value": "new", "timestamp": 2 << 16, "replica": "n2"}
    quorums.answered("n2", {"in_reply_to": 1, "state": newer})
    quorums.answered("n2", {"in_reply_to": 1, "state": None})  # a second answer is ignored
    assert not wait.future.done()
    quorums.answered("n3", {"in_reply_to": 2, "state": None})
    assert wait.future.done() and wait.future.result() is None
    assert keyspaces.states["lww"]["k"] == LWW.from_wire(newer)
    quorums.repair(wait)
    assert [(peer, body["type"]) for peer, body in outbox.sent[2:]] == [("n3", "lww_merge")]
    assert outbox.sent[2][1]["state"] == newer


def test_a_pending_result_runs_its_callbacks_at_once_and_carries_errors() -> None:
    pending: Pending[int] = Pending()
    seen: list[int] = []
    doubled = pending.then(lambda n: n * 2)
    doubled.add_done_callback(lambda p: seen.append(p.result()))
    broken = pending.then(lambda n: n // 0)
    assert not doubled.done() and seen == []
    pending.set_result(21)
    assert seen == [42]  # within set_result: no loop turn
    assert isinstance(broken.exception(), ZeroDivisionError)
    assert isinstance(broken.then(str).exception(), ZeroDivisionError)
    late: list[int] = []
    pending.add_done_callback(lambda p: late.append(p.result()))
    assert late == [21]
