"""Golden vectors: the wire format of every type's replies and merges, and the stored record.

`tests/golden/<type>.jsonl` holds one step per line, `{"note", "request",
"reply"}`, fed in order to a fresh in-process node `n1` of the cluster
`[n1, n2]`: clients' writes and reads (bare form), a peer's `<type>_merge`
(envelope form, from `n2`) and the read after it.  `reply` is null where
the node sends none.  Replies are compared as JSON values, as PROTOCOL.md
says clients compare them (key order free), but exactly otherwise: every
field, `msg_id` included, and `1`, `1.0` and `true` are three values.
Timestamps are given explicitly, so no vector depends on the wall clock.

`tests/golden/records.jsonl` pins the log record of one commit holding the
final state of each sequence's key and one key that is gone: its bytes
(header in hex, then the JSON body as text) and the entries its reader
gives back.  Stored data must stay readable, so these bytes change only
with a new record version.

To write the files again from the node's current behaviour:

    REPLICA_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py

then read the diff: it is a change of the wire contract.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from replica.crdt.registry import BY_NAME
from replica.durable.records import encode_commit, log_entries, state_of
from replica.node.router import Node
from replica.session import trusted

GOLDEN = Path(__file__).resolve().parent / "golden"
REGENERATE = os.environ.get("REPLICA_REGEN_GOLDEN") == "1"

Step = tuple[str, dict[str, Any]]


def peer(body: dict[str, Any]) -> dict[str, Any]:
    """`body` as peer n2 sends it to n1."""
    return {"src": "n2", "dest": "n1", "body": body}


MV: list[Step] = [
    ("an absent key", {"type": "mv_read", "msg_id": 1, "key": "cart"}),
    (
        "a write without context",
        {"type": "mv_write", "msg_id": 2, "key": "cart", "value": ["milk"]},
    ),
    (
        "a write with an empty context replaces nothing: two siblings",
        {"type": "mv_write", "msg_id": 3, "key": "cart", "value": "eggs", "context": {}},
    ),
    (
        "a peer's batch: its sibling has seen the first write, which is now obsolete",
        peer(
            {
                "type": "mv_merge",
                "msg_id": 11,
                "deltas": [
                    {
                        "key": "cart",
                        "siblings": [{"value": "jam", "dot": ["n2", 1], "past": {"n1": 1}}],
                    }
                ],
            }
        ),
    ),
    ("the read after the merge", {"type": "mv_read", "msg_id": 4, "key": "cart"}),
    (
        "a peer's single dot-less entry (the classic version-vector form), not acknowledged",
        peer({"type": "mv_merge", "key": "cart", "entry": {"value": "tea", "vclock": {"n2": 2}}}),
    ),
    ("the read after it", {"type": "mv_read", "msg_id": 5, "key": "cart"}),
    (
        "a write with the read's context resolves every sibling",
        {
            "type": "mv_write",
            "msg_id": 6,
            "key": "cart",
            "value": ["milk", "jam", "tea"],
            "context": {"n1": 2, "n2": 2},
        },
    ),
    ("a missing field", {"type": "mv_write", "msg_id": 7, "key": "cart"}),
]

KV: list[Step] = [
    ("an absent key", {"type": "kv_get", "msg_id": 1, "key": "user:1"}),
    (
        "a first write",
        {"type": "kv_put", "msg_id": 2, "key": "user:1", "value": "Alice", "clock": [1, 0]},
    ),
    (
        "a concurrent write",
        {"type": "kv_put", "msg_id": 3, "key": "user:1", "value": "Bob", "clock": [0, 1]},
    ),
    ("a retry", {"type": "kv_put", "msg_id": 4, "key": "user:1", "value": "Alice", "clock": [1]}),
    (
        "a stale write",
        {"type": "kv_put", "msg_id": 5, "key": "user:1", "value": "Eve", "clock": [0, 1]},
    ),
    (
        "a peer's batch: a sibling that dominates Bob",
        peer(
            {
                "type": "kv_merge",
                "msg_id": 12,
                "deltas": [{"key": "user:1", "siblings": [{"value": "Carol", "clock": [0, 2]}]}],
            }
        ),
    ),
    ("the read after the merge", {"type": "kv_get", "msg_id": 6, "key": "user:1"}),
    (
        "a resolve that misses a sibling",
        {"type": "kv_resolve", "msg_id": 7, "key": "user:1", "value": "x", "clock": [1, 1]},
    ),
    (
        "a resolve that covers both",
        {
            "type": "kv_resolve",
            "msg_id": 8,
            "key": "user:1",
            "value": "Alice+Carol",
            "clock": [1, 2],
        },
    ),
]

MVCC: list[Step] = [
    ("an absent key", {"type": "mvcc_get", "msg_id": 1, "key": "x"}),
    ("version 1", {"type": "mvcc_put", "msg_id": 2, "key": "x", "value": "v1", "timestamp": 100}),
    ("version 2", {"type": "mvcc_put", "msg_id": 3, "key": "x", "value": "v2", "timestamp": 200}),
    ("a retry", {"type": "mvcc_put", "msg_id": 4, "key": "x", "value": "v2", "timestamp": 200}),
    (
        "below the newest",
        {"type": "mvcc_put", "msg_id": 5, "key": "x", "value": "v9", "timestamp": 150},
    ),
    ("a read in the past", {"type": "mvcc_get", "msg_id": 6, "key": "x", "read_timestamp": 150}),
    (
        "a peer's batch: a version between the two",
        peer(
            {
                "type": "mvcc_merge",
                "msg_id": 13,
                "deltas": [
                    {
                        "key": "x",
                        "state": {"versions": [[170, "w", "n2"]], "floor": -1, "dropped": 0},
                    }
                ],
            }
        ),
    ),
    (
        "the read after the merge",
        {"type": "mvcc_get", "msg_id": 7, "key": "x", "read_timestamp": 180},
    ),
    (
        "a snapshot",
        {"type": "mvcc_snapshot", "msg_id": 8, "keys": ["x", "y"], "read_timestamp": 250},
    ),
    ("garbage collection", {"type": "mvcc_gc", "msg_id": 9, "before": 180}),
    (
        "a read below the horizon",
        {"type": "mvcc_get", "msg_id": 10, "key": "x", "read_timestamp": 120},
    ),
    ("the newest", {"type": "mvcc_get", "msg_id": 11, "key": "x"}),
]

LWW: list[Step] = [
    ("an absent key", {"type": "lww_read", "msg_id": 1, "key": "flag"}),
    ("a write", {"type": "lww_write", "msg_id": 2, "key": "flag", "value": True, "timestamp": 5}),
    (
        "an older write loses",
        {"type": "lww_write", "msg_id": 3, "key": "flag", "value": False, "timestamp": 3},
    ),
    ("the read", {"type": "lww_read", "msg_id": 4, "key": "flag"}),
    (
        "a peer's batch: the same timestamp from n2, which wins the tie",
        peer(
            {
                "type": "lww_merge",
                "msg_id": 14,
                "deltas": [
                    {"key": "flag", "state": {"value": "on", "timestamp": 5, "replica": "n2"}}
                ],
            }
        ),
    ),
    ("the read after the merge", {"type": "lww_read", "msg_id": 5, "key": "flag"}),
]

COUNTER: list[Step] = [
    ("an absent key reads 0", {"type": "counter_read", "msg_id": 1, "key": "likes"}),
    ("an addition", {"type": "counter_add", "msg_id": 2, "key": "likes", "delta": 5}),
    ("a subtraction", {"type": "counter_add", "msg_id": 3, "key": "likes", "delta": -2}),
    (
        "a peer's batch: n2's own totals",
        peer(
            {
                "type": "counter_merge",
                "msg_id": 15,
                "deltas": [{"key": "likes", "state": {"p": {"n2": 10}, "n": {"n2": 1}}}],
            }
        ),
    ),
    ("the read after the merge", {"type": "counter_read", "msg_id": 4, "key": "likes"}),
]

DELETES: list[Step] = [
    ("an MV write", {"type": "mv_write", "msg_id": 1, "key": "cart", "value": "milk"}),
    (
        "a delete with the write's context: nothing left, the context still covers it",
        {"type": "mv_delete", "msg_id": 2, "key": "cart", "context": {"n1": 1}},
    ),
    (
        "a peer's batch: the deleted value again, a concurrent one, and a peer's tombstone",
        peer(
            {
                "type": "mv_merge",
                "msg_id": 16,
                "deltas": [
                    {
                        "key": "cart",
                        "siblings": [
                            {"value": "milk", "dot": ["n1", 1], "past": {}},
                            {"value": "jam", "dot": ["n2", 1], "past": {}},
                            {"deleted": {"n2": 0, "n3": 2}},
                        ],
                    }
                ],
            }
        ),
    ),
    (
        "the read after the merge: only the concurrent value",
        {"type": "mv_read", "msg_id": 3, "key": "cart"},
    ),
    ("a KV write", {"type": "kv_put", "msg_id": 4, "key": "user", "value": "a", "clock": [1, 0]}),
    ("a stale delete", {"type": "kv_delete", "msg_id": 5, "key": "user", "clock": [1]}),
    ("a KV delete", {"type": "kv_delete", "msg_id": 6, "key": "user", "clock": [2, 0]}),
    (
        "a peer's batch: the deleted sibling and a tombstone",
        peer(
            {
                "type": "kv_merge",
                "msg_id": 17,
                "deltas": [
                    {
                        "key": "user",
                        "siblings": [{"value": "a", "clock": [1, 0]}, {"deleted": [0, 3]}],
                    }
                ],
            }
        ),
    ),
    ("the KV read after the merge", {"type": "kv_get", "msg_id": 7, "key": "user"}),
    (
        "a write below a tombstone is stale",
        {"type": "kv_put", "msg_id": 8, "key": "user", "value": "b", "clock": [0, 2]},
    ),
    ("an LWW write", {"type": "lww_write", "msg_id": 9, "key": "f", "value": 1, "timestamp": 5}),
    ("an LWW delete", {"type": "lww_delete", "msg_id": 10, "key": "f", "timestamp": 5}),
    ("the LWW read: gone", {"type": "lww_read", "msg_id": 11, "key": "f"}),
    (
        "a peer's LWW tombstone above it, then a write above that",
        peer(
            {
                "type": "lww_merge",
                "msg_id": 18,
                "deltas": [
                    {
                        "key": "f",
                        "state": {"value": None, "timestamp": 6, "replica": "n2", "deleted": True},
                    }
                ],
            }
        ),
    ),
    (
        "an LWW write above it",
        {"type": "lww_write", "msg_id": 12, "key": "f", "value": 2, "timestamp": 7},
    ),
    (
        "an MVCC version",
        {"type": "mvcc_put", "msg_id": 13, "key": "x", "value": "v", "timestamp": 100},
    ),
    ("an MVCC delete", {"type": "mvcc_delete", "msg_id": 14, "key": "x", "timestamp": 200}),
    ("a read after it: gone", {"type": "mvcc_get", "msg_id": 15, "key": "x"}),
    ("a read before it", {"type": "mvcc_get", "msg_id": 16, "key": "x", "read_timestamp": 150}),
    (
        "a peer's chain with the tombstone version",
        peer(
            {
                "type": "mvcc_merge",
                "msg_id": 19,
                "deltas": [
                    {
                        "key": "y",
                        "state": {
                            "versions": [[10, "w", "n2"], [20, None, "n2", True]],
                            "floor": -1,
                            "dropped": 0,
                        },
                    }
                ],
            }
        ),
    ),
    (
        "a snapshot: a tombstone reads as absent",
        {"type": "mvcc_snapshot", "msg_id": 17, "keys": ["x", "y"], "read_timestamp": 250},
    ),
    ("a counter addition", {"type": "counter_add", "msg_id": 18, "key": "c", "delta": 5}),
    ("a counter delete: a reset", {"type": "counter_delete", "msg_id": 19, "key": "c"}),
    ("an MV delete without a context", {"type": "mv_delete", "msg_id": 20, "key": "cart"}),
    ("the tombstones each keyspace holds", {"type": "status", "msg_id": 21}),
]

SEQUENCES: dict[str, tuple[list[Step], str]] = {
    "mv": (MV, "cart"),
    "kv": (KV, "user:1"),
    "mvcc": (MVCC, "x"),
    "lww": (LWW, "flag"),
    "counter": (COUNTER, "likes"),
}


def new_node() -> Node:
    return Node("n1", ["n1", "n2"])


def replay(node: Node, requests: list[dict[str, Any]]) -> list[Any]:
    """Each request as one line to `node`; its decoded reply, or None."""
    replies = []
    for request in requests:
        line = node.handle_line(orjson.dumps(request), trusted())
        replies.append(None if line is None else orjson.loads(line))
    return replies


def canonical(value: Any) -> bytes:
    """A JSON value as bytes that are equal exactly when the values are (key order aside)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))


def final_states() -> dict[tuple[str, str], Any]:
    """Each type's key after its sequence, and one mv key that is gone."""
    states: dict[tuple[str, str], Any] = {}
    for name, (steps, key) in SEQUENCES.items():
        node = new_node()
        replay(node, [request for _, request in steps])
        states[(name, key)] = node.keyspaces.get(BY_NAME[name], key)
    states[("mv", "gone")] = None
    return states


@pytest.fixture(scope="module", autouse=True)
def regenerate() -> None:
    if not REGENERATE:
        return
    for name, (steps, _) in SEQUENCES.items():
        replies = replay(new_node(), [request for _, request in steps])
        lines = [
            {"note": note, "request": request, "reply": reply}
            for (note, request), reply in zip(steps, replies, strict=True)
        ]
        write_lines(GOLDEN / f"{name}.jsonl", lines)
    replies = replay(new_node(), [request for _, request in DELETES])
    lines = [
        {"note": note, "request": request, "reply": _pinned(reply)}
        for (note, request), reply in zip(DELETES, replies, strict=True)
    ]
    write_lines(GOLDEN / "deletes.jsonl", lines)
    record = encode_commit(final_states())
    header, body = record[:2], record[2:]
    entries = [list(entry) for entry in log_entries(record)]
    write_lines(
        GOLDEN / "records.jsonl",
        [{"header_hex": header.hex(), "body": body.decode(), "entries": entries}],
    )


@pytest.mark.parametrize("name", SEQUENCES)
def test_replies_match_the_golden_vectors(name: str) -> None:
    golden = read_lines(GOLDEN / f"{name}.jsonl")
    steps, _ = SEQUENCES[name]
    assert [line["request"] for line in golden] == [request for _, request in steps], (
        "the requests here and in the golden file differ: regenerate the file"
    )
    replies = replay(new_node(), [line["request"] for line in golden])
    for line, reply in zip(golden, replies, strict=True):
        assert canonical(reply) == canonical(line["reply"]), line["note"]


def _pinned(reply: Any) -> Any:
    """What of a reply is pinned: a status reply by its tombstone counts alone."""
    if isinstance(reply, dict) and reply.get("type") == "status_ok":
        return {"type": "status_ok", "tombstones": reply["tombstones"]}
    return reply


def test_delete_replies_match_the_golden_vectors() -> None:
    golden = read_lines(GOLDEN / "deletes.jsonl")
    assert [line["request"] for line in golden] == [request for _, request in DELETES], (
        "the requests here and in the golden file differ: regenerate the file"
    )
    replies = replay(new_node(), [line["request"] for line in golden])
    for line, reply in zip(golden, replies, strict=True):
        assert canonical(_pinned(reply)) == canonical(line["reply"]), line["note"]


def test_every_type_of_the_registry_has_golden_vectors() -> None:
    assert set(SEQUENCES) == set(BY_NAME)


def test_every_type_has_a_merge_from_a_peer_and_a_read_after_it() -> None:
    for name, (steps, _) in SEQUENCES.items():
        types = [request.get("body", request)["type"] for _, request in steps]
        merge = types.index(f"{name}_merge")
        assert any(t.startswith(name) and t.endswith(("_read", "_get")) for t in types[merge:])


def test_the_commit_record_matches_its_golden_bytes() -> None:
    (golden,) = read_lines(GOLDEN / "records.jsonl")
    expected = bytes.fromhex(golden["header_hex"]) + golden["body"].encode()
    states = final_states()
    record = encode_commit(states)
    assert record == expected
    entries = log_entries(expected)
    assert [list(entry) for entry in entries] == golden["entries"]
    for keyspace, key, stored in entries:
        state = states[(keyspace, key)]
        assert (None if stored is None else state_of(keyspace, key, stored)) == state
