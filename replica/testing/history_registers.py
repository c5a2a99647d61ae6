"""The history rules of the timestamped keyspaces: the LWW register and MVCC versions.

LWW: the greatest `(timestamp, replica)` of the acknowledged writes and deletes
wins on every node, a delete above a write at the same pair (PROTOCOL.md): a
read then answers error 20, and a value under a winning tombstone is
resurrected.  MVCC: each acknowledged version is readable at its timestamp
unless collected, and an acknowledged tombstone version makes reads at or
after it answer 20 until a later version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from replica.testing.history_record import (
    Found,
    Operation,
    Reads,
    Violation,
    alike,
    as_json,
    fields,
    is_error,
    same,
    stamp,
)

ABSENT = 20
"""The error code of a read that finds no value (key-does-not-exist)."""


def check_lww(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """The greatest acknowledged `(timestamp, replica)`, write or delete, wins everywhere."""
    found = Found("lww", key)
    found.disagreements(reads, _lww_state)
    writes = [op for op in ops if op.type == "lww_write" and op.may_have_happened]
    deletes = [op for op in ops if op.type == "lww_delete" and op.may_have_happened]
    acked = [op for op in writes + deletes if op.ok and op.reply]
    best = max(acked, key=_lww_rank, default=None)
    for node, reply in alike(reads):
        if is_error(reply):
            if is_error(reply, ABSENT) and any(_lww_may_win(d, best) for d in deletes):
                continue
            if best is not None:
                found.add("lost write", f"{node} answers error {reply.get('code')}", best)
            continue
        rank = (reply["timestamp"], reply["replica"], False)
        shown = f"{node} shows {as_json(reply['value'])} at {as_json(rank[:2])}"
        makers = [op for op in writes if _lww_could_make(op, reply)]
        if not makers:
            found.add("never written", f"{shown}, which no write made")
        elif best is not None and rank < _lww_rank(best):
            if best.type == "lww_delete":
                found.add("resurrected", f"{shown}, below an acknowledged delete", *makers, best)
            else:
                found.add("lost write", f"{shown}, below the acknowledged winner", best, *makers)
    return found


def check_mvcc(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """Each acknowledged version readable at its timestamp, unless collected; no value at or
    after an acknowledged tombstone but a later version; no unwritten value.

    `reads` maps a node to its replies keyed by read timestamp (None: the newest).
    The horizon is the greatest `before` of a recorded `mvcc_gc`; the automatic
    one (`mvcc_retention_ms`) is not in the history.
    """
    found = Found("mvcc", key)
    puts = [op for op in ops if op.type == "mvcc_put" and op.may_have_happened]
    deletes = [op for op in ops if op.type == "mvcc_delete" and op.may_have_happened]
    acked = [op for op in puts + deletes if op.ok and op.reply]
    gcs = [op.body.get("before", -1) for op in ops if op.type == "mvcc_gc" and op.may_have_happened]
    horizon = max(gcs, default=-1)
    by_ts: dict[Any, dict[str, Any]] = {}
    for node, replies in reads.items():
        for ts, reply in replies.items():
            by_ts.setdefault(ts, {})[node] = reply
            if not is_error(reply) and not _made_by(puts, reply):
                found.add("never written", f"{node} reads {as_json(fields(reply))}")
    for ts, replies in by_ts.items():
        found.disagreements(replies, _mvcc_state, f" at read timestamp {ts}")
    for op in acked:
        ts = stamp(op)
        if ts < horizon:
            continue
        if ts not in by_ts:
            found.add("unread", f"no node was read at timestamp {ts}", op)
        for node, reply in by_ts.get(ts, {}).items():
            # Another version at the same timestamp may win there (the greater origin).
            if op.type == "mvcc_put" and not _shows_put_at(reply, ts, deletes):
                found.add("lost write", f"{node} reads {as_json(fields(reply))} at {ts}", op)
            elif op.type == "mvcc_delete" and not _shows_delete_at(reply, ts, puts):
                shown = f"{node} reads {as_json(fields(reply))} at {ts}"
                found.add("resurrected", f"{shown}, at an acknowledged delete", op)
    newest = max(acked, key=stamp, default=None)
    for node, reply in by_ts.get(None, {}).items():
        if newest is None:
            continue
        ts, shown = stamp(newest), f"{node}'s newest is {as_json(fields(reply))}"
        if is_error(reply, ABSENT) and any(_mvcc_stamp_from(d, ts) for d in deletes):
            continue
        if reply.get("as_of_timestamp", -1) >= ts:
            continue
        deleted = newest.type == "mvcc_delete" and not is_error(reply)
        kind = "resurrected" if deleted else "lost write"
        found.add(kind, shown, newest)
    return found


def _lww_rank(op: Operation) -> tuple[int, str, bool]:
    """An acknowledged write's or delete's rank: a tombstone above a write at its pair."""
    assert op.reply is not None
    return op.reply["timestamp"], op.reply["replica"], op.type == "lww_delete"


def _lww_may_win(delete: Operation, best: Operation | None) -> bool:
    """Whether `delete` (acknowledged or not) may rank at or above every acknowledged one."""
    if best is None:
        return True
    if delete.ok:
        return _lww_rank(delete) >= _lww_rank(best)
    given = delete.body.get("timestamp")
    return given is None or (given, delete.node, True) >= _lww_rank(best)


def _lww_could_make(op: Operation, reply: Mapping[str, Any]) -> bool:
    if not same(op.body.get("value"), reply["value"]):
        return False
    if op.ok and op.reply is not None:
        return _lww_rank(op)[:2] == (reply["timestamp"], reply["replica"])
    given = op.body.get("timestamp")
    return op.node == reply["replica"] and given in (None, reply["timestamp"])


def _lww_state(reply: Any) -> Any:
    if is_error(reply):
        return {"error": reply.get("code")}
    return [reply["value"], reply["timestamp"], reply["replica"]]


def _made_by(puts: list[Operation], reply: Mapping[str, Any]) -> bool:
    return any(_mvcc_could_make(op, reply["value"], reply["as_of_timestamp"]) for op in puts)


def _mvcc_could_make(op: Operation, value: Any, timestamp: int) -> bool:
    if not same(op.body.get("value"), value):
        return False
    if op.ok and op.reply is not None:
        return bool(op.reply["timestamp"] == timestamp)
    return op.body.get("timestamp") in (None, timestamp)


def _mvcc_stamp_from(op: Operation, at_least: int, exactly: bool = False) -> bool:
    """Whether `op` may have been stamped `at_least` (or later, unless `exactly`)."""
    if op.ok and op.reply is not None:
        ts = stamp(op)
    else:
        given = op.body.get("timestamp")
        if given is None:
            return True
        ts = given
    return bool(ts == at_least if exactly else ts >= at_least)


def _shows_put_at(reply: Mapping[str, Any], ts: int, deletes: list[Operation]) -> bool:
    """A read at an acknowledged put's `ts`: its version, or a tombstone of the same instant."""
    if is_error(reply, ABSENT):
        return any(_mvcc_stamp_from(d, ts, exactly=True) for d in deletes)
    return bool(reply.get("as_of_timestamp") == ts)


def _shows_delete_at(reply: Mapping[str, Any], ts: int, puts: list[Operation]) -> bool:
    """A read at an acknowledged tombstone's `ts`: absent, or a version of the same instant."""
    if is_error(reply, ABSENT):
        return True
    return reply.get("as_of_timestamp") == ts and not is_error(reply) and _made_by(puts, reply)


def _mvcc_state(reply: Any) -> Any:
    if is_error(reply):
        return {"error": reply.get("code")}
    return [reply["value"], reply["as_of_timestamp"]]
