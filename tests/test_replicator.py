"""The replicator on its own: built from keyspaces, a message numbering and an outbox.

No node, no socket: what it sends is what it was given to send, and its
state is driven by its change notifications and the replies handed to it.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from replica.crdt import registry
from replica.crdt.pn_counter import PNCounter
from replica.keyspaces import Keyspaces
from replica.node.handlers import mv as mv_handlers
from replica.replication.replicator import Replicator


def build(peers: list[str]) -> tuple[Keyspaces, Replicator, list[tuple[str, Any]]]:
    keyspaces = Keyspaces("n1")
    replicator = Replicator("n1", peers, keyspaces, itertools.count(100))
    sent: list[tuple[str, Any]] = []
    replicator.outbox = lambda dest, line: not sent.append((dest, orjson.loads(line)))
    for peer in peers:
        replicator.link_up(peer)
    return keyspaces, replicator, sent


def test_every_type_ships_as_its_registry_merge_message_and_an_ack_clears_it() -> None:
    keyspaces, replicator, sent = build(["n2"])
    mv_handlers.write(keyspaces, "cart", "milk", None)
    keyspaces.put(registry.COUNTER, "likes", PNCounter().add("n1", 3))
    replicator.push()
    by_type = {message["body"]["type"]: message for _, message in sent}
    assert set(by_type) == {"mv_merge", "counter_merge"}
    counter = by_type["counter_merge"]
    assert counter["src"] == "n1" and counter["dest"] == "n2"
    assert counter["body"]["deltas"] == [{"key": "likes", "state": {"p": {"n1": 3}, "n": {}}}]
    assert sorted(m["body"]["msg_id"] for m in by_type.values()) == [100, 101]
    assert replicator.tracker.pending("n2") == 2
    for message in by_type.values():
        body = message["body"]
        replicator.on_reply("n2", {"type": f"{body['type']}_ok", "in_reply_to": body["msg_id"]})
    assert replicator.tracker.pending("n2") == 0


def test_a_merged_state_is_not_pushed_again_but_is_in_the_digests() -> None:
    keyspaces, replicator, sent = build(["n2", "n3"])
    keyspaces.merge(registry.COUNTER, "likes", PNCounter().add("n2", 1))
    replicator.push()
    assert sent == []
    replicator.tick()
    _, empty, _ = build(["n2", "n3"])
    assert replicator.digests["counter"].root() != empty.digests["counter"].root()
    assert replicator.digests["mv"].root() == empty.digests["mv"].root()


def test_unknown_senders_replies_change_nothing() -> None:
    keyspaces, replicator, sent = build(["n2"])
    mv_handlers.write(keyspaces, "k", 1, None)
    replicator.push()
    ((_, message),) = sent
    msg_id = message["body"]["msg_id"]
    replicator.on_reply("n9", {"type": "mv_merge_ok", "in_reply_to": msg_id})
    replicator.on_reply(None, {"type": "mv_merge_ok", "in_reply_to": msg_id})
    assert replicator.tracker.pending("n2") == 1
