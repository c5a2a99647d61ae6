"""Tombstone collection in process: when a node may drop a key, and what it keeps of it.

A node drops a key holding only a tombstone once every peer confirmed it and
nothing of it is still owed or being read; the rules are driven here through
the replicator's own outbox and replies, and the node's handlers.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson
import pytest

from replica.crdt import registry
from replica.crdt.mv_register import MVRegister
from replica.crdt.mv_sibling import Sibling
from replica.crdt.mvcc import VersionChain
from replica.keyspaces import Keyspaces
from replica.node.handlers import mv as mv_handlers
from replica.node.router import Node
from replica.replication.pending import Pending
from replica.replication.quorum import ReadWait
from replica.replication.replicator import Replicator
from replica.session import Session, trusted

MV = registry.MV


def tombstone(deleted: dict[str, int]) -> MVRegister:
    return MVRegister.of([], deleted)


def build() -> tuple[Keyspaces, Replicator, list[tuple[str, Any]]]:
    keyspaces = Keyspaces("n1")
    replicator = Replicator("n1", ["n2", "n3"], keyspaces, itertools.count(100))
    sent: list[tuple[str, Any]] = []
    replicator.outbox = lambda dest, line: not sent.append((dest, orjson.loads(line)["body"]))
    for peer in ("n2", "n3"):
        replicator.link_up(peer)
        replicator.tombstones.link_opened(peer)
    return keyspaces, replicator, sent


def delete_and_deliver(
    keyspaces: Keyspaces, replicator: Replicator, sent: list[tuple[str, Any]]
) -> MVRegister:
    """Write and delete `k` here, push the tombstone, and have both peers acknowledge it."""
    _, sibling = mv_handlers.write(keyspaces, "k", "v", None)
    state = mv_handlers.delete(keyspaces, "k", sibling.vclock())
    replicator.push()
    for peer, body in sent:
        replicator.on_reply(peer, {"type": "mv_merge_ok", "in_reply_to": body["msg_id"]})
    sent.clear()
    return state


def test_remove_drops_the_key_and_keeps_the_node_s_counters_above_it() -> None:
    keyspaces = Keyspaces("n1")
    keyspaces.put(MV, "k", tombstone({"n1": 5, "n2": 2}))
    assert keyspaces.tombstones()["mv"] == 1
    assert keyspaces.remove(MV, "k") == tombstone({"n1": 5, "n2": 2})
    assert "k" not in keyspaces.states["mv"]
    assert keyspaces.tombstones()["mv"] == 0 and keyspaces.collected["mv"] == 1
    assert keyspaces.dot_floor == 5
    _, sibling = mv_handlers.write(keyspaces, "k", "new", None)
    assert sibling.dot == ("n1", 6)


def test_a_late_copy_of_a_dropped_tombstone_is_not_taken_back_but_anything_more_is() -> None:
    keyspaces = Keyspaces("n1")
    keyspaces.put(MV, "k", tombstone({"n2": 3}))
    keyspaces.remove(MV, "k")
    keyspaces.merge(MV, "k", tombstone({"n2": 3}))
    keyspaces.merge(MV, "k", tombstone({"n2": 2}))
    assert "k" not in keyspaces.states["mv"]
    keyspaces.merge(MV, "k", tombstone({"n2": 4}))
    assert keyspaces.states["mv"]["k"] == tombstone({"n2": 4})
    keyspaces.remove(MV, "k")
    fresh = MVRegister.of([Sibling("new", "n2", 9, {})])
    keyspaces.merge(MV, "k", fresh)
    assert keyspaces.states["mv"]["k"] == fresh


def test_a_key_goes_once_every_peer_confirmed_it_and_not_before() -> None:
    keyspaces, replicator, sent = build()
    state = delete_and_deliver(keyspaces, replicator, sent)
    replicator.tick()
    asks = {peer: body for peer, body in sent if body["type"] == "tombstone_ask"}
    assert {peer: body["keys"] for peer, body in asks.items()} == {
        "n2": {"mv": ["k"]},
        "n3": {"mv": ["k"]},
    }
    replicator.tombstones.heard("n2", "mv", "k", state)
    replicator.tick()
    assert "k" in keyspaces.states["mv"], "n3 has not confirmed"
    replicator.tombstones.gone("n3", [("mv", "k")])
    replicator.tick()
    assert "k" not in keyspaces.states["mv"]
    assert keyspaces.collected["mv"] == 1


def test_only_a_state_holding_the_tombstone_confirms_it() -> None:
    keyspaces, replicator, sent = build()
    state = delete_and_deliver(keyspaces, replicator, sent)
    collector = replicator.tombstones
    (dot,) = [(actor, n) for actor, n in state.deleted.items()]
    older = MVRegister.of([Sibling("v", dot[0], dot[1], {})])
    collector.heard("n2", "mv", "k", older)  # its old value: merged away, confirms nothing
    collector.heard("n3", "mv", "k", tombstone({}))
    assert collector.candidates[("mv", "k")].confirmed == set()
    collector.heard("n2", "mv", "k", state)
    assert collector.candidates[("mv", "k")].confirmed == {"n2"}


def test_a_confirmation_does_not_count_while_the_peer_has_a_second_connection_open() -> None:
    keyspaces, replicator, sent = build()
    state = delete_and_deliver(keyspaces, replicator, sent)
    collector = replicator.tombstones
    collector.link_opened("n2")  # its older connection may still hold unread messages
    collector.heard("n2", "mv", "k", state)
    collector.gone("n2", [("mv", "k")])
    assert collector.candidates[("mv", "k")].confirmed == set()
    collector.link_closed("n2")
    collector.heard("n2", "mv", "k", state)
    assert collector.candidates[("mv", "k")].confirmed == {"n2"}


def test_a_change_to_the_key_starts_its_confirmations_over() -> None:
    keyspaces, replicator, sent = build()
    state = delete_and_deliver(keyspaces, replicator, sent)
    replicator.tombstones.heard("n2", "mv", "k", state)
    keyspaces.merge(MV, "k", tombstone({"n3": 1}))
    candidate = replicator.tombstones.candidates[("mv", "k")]
    assert candidate.confirmed == set() and candidate.state == keyspaces.states["mv"]["k"]


def test_a_key_still_owed_to_a_peer_or_read_by_a_quorum_is_held_back() -> None:
    keyspaces, replicator, sent = build()
    _, sibling = mv_handlers.write(keyspaces, "k", "v", None)
    state = mv_handlers.delete(keyspaces, "k", sibling.vclock())
    for peer in ("n2", "n3"):
        replicator.tombstones.heard(peer, "mv", "k", state)
    replicator.tick()
    assert "k" in keyspaces.states["mv"], "the tombstone was never sent"
    replicator.push()
    for peer, body in sent:
        if body["type"] == "mv_merge":
            replicator.on_reply(peer, {"type": "mv_merge_ok", "in_reply_to": body["msg_id"]})
    replicator.quorums.reads[("n2", 7)] = ReadWait("mv", "k", 1, Pending())
    replicator.tick()
    assert "k" in keyspaces.states["mv"], "a quorum read of it is waiting"
    replicator.quorums.reads.clear()
    replicator.tick()
    assert "k" not in keyspaces.states["mv"]


def test_a_peer_that_asks_gets_the_key_as_gossip_or_hears_that_it_went() -> None:
    keyspaces, replicator, sent = build()
    keyspaces.merge(MV, "held", tombstone({"n2": 1}))
    keyspaces.put(MV, "dropped", tombstone({"n2": 2}))
    keyspaces.remove(MV, "dropped")
    replicator.push()  # every key newly holding only a tombstone goes to every peer: acknowledged
    for peer, body in sent:
        replicator.on_reply(peer, {"type": "mv_merge_ok", "in_reply_to": body["msg_id"]})
    sent.clear()
    replicator.tombstones_asked("n2", {"mv": ["held", "dropped", "never"]})
    replicator.push()
    by_type = {body["type"]: body for peer, body in sent if peer == "n2"}
    assert by_type["tombstone_gone"]["keys"] == {"mv": ["dropped"]}
    assert [d["key"] for d in by_type["mv_merge"]["deltas"]] == ["held"]
    assert all(peer == "n2" for peer, _ in sent)


@pytest.mark.parametrize(
    ("session", "body", "code"),
    [
        (Session(), {"keys": {"mv": ["k"]}}, 1000),
        (Session(peer="n2"), {"keys": ["k"]}, 12),
        (Session(peer="n2"), {"keys": {"counter": ["k"]}}, 12),
        (Session(peer="n2"), {"keys": {"mv": [1]}}, 12),
    ],
)
def test_a_tombstone_ask_from_a_stranger_or_malformed_changes_nothing(
    session: Session, body: dict[str, Any], code: int
) -> None:
    node = Node("n1", ["n1", "n2", "n3"])
    for message_type in ("tombstone_ask", "tombstone_gone"):
        line = orjson.dumps({"type": message_type, "msg_id": 1, **body})
        reply = orjson.loads(node.handle_line(line, session))  # type: ignore[arg-type]
        assert reply["type"] == "error" and reply["code"] == code, reply
    assert node.replicator is not None and node.replicator.tracker.pending("n2") == 0


def test_a_late_mvcc_copy_with_versions_below_this_node_s_horizon_is_not_taken_back() -> None:
    keyspaces = Keyspaces("n1")
    chain, _ = VersionChain().put(100, "v", "n2")
    chain, _ = chain.put(200, None, "n2", deleted=True)
    keyspaces.put(registry.MVCC, "k", chain)  # a peer whose horizon is lower still holds this
    keyspaces.collect_garbage(before=250)
    only_tombstone = keyspaces.states["mvcc"]["k"]
    assert [v.timestamp for v in only_tombstone.versions] == [200]
    keyspaces.remove(registry.MVCC, "k")
    keyspaces.merge(registry.MVCC, "k", chain)
    assert "k" not in keyspaces.states["mvcc"]


def test_over_stdio_nothing_confirms_a_tombstone() -> None:
    """A harness's network need not keep one sender's messages in order."""
    node = Node("n1", ["n1", "n2", "n3"])
    keyspaces, replicator = node.keyspaces, node.replicator
    assert replicator is not None
    _, sibling = mv_handlers.write(keyspaces, "k", 1, None)
    state = mv_handlers.delete(keyspaces, "k", sibling.vclock())
    merge = {"type": "mv_merge", "msg_id": 1, "key": "k", "siblings": state.to_wire()}
    gone = {"type": "tombstone_gone", "msg_id": 2, "keys": {"mv": ["k"]}}
    for body in (merge, gone):
        node.handle_line(orjson.dumps({"src": "n2", "dest": "n1", "body": body}), trusted())
    assert replicator.tombstones.candidates[("mv", "k")].confirmed == set()
    for body in (merge, gone):
        line = orjson.dumps({"src": "n3", "dest": "n1", "body": body})
        node.handle_line(line, Session(peer="n3"))
    assert replicator.tombstones.candidates[("mv", "k")].confirmed == {"n3"}
