"""The history rule of the MV register: writes, their contexts, and deletes.

An acknowledged `mv_write`'s dot must be visible on every node unless some
write or delete that may have happened replaced it: one whose context covered
the dot (Preguiça et al. 2010, dotted version vectors: a context covering a
dot supersedes it).  An `mv_delete` removes exactly what its context covers,
so an acknowledged delete makes those dots gone for good: a covered value seen
afterwards is resurrected.  A write whose dot no delete covered was concurrent
with them all and must survive.
"""

from __future__ import annotations

from typing import Any

from replica.crdt.version_vector import Dot, VersionVector, covers
from replica.testing.history_record import (
    Found,
    Operation,
    Reads,
    Violation,
    alike,
    as_json,
    mv_dot,
    owner,
    same,
)


def mv_superseded(op: Operation) -> VersionVector | None:
    """What an MV write replaced, or None when that cannot be known.

    With a `context` it is exactly that context.  An acknowledged write without
    one replaced what its node showed, whose context is the reply's `vclock`
    with the new dot's entry lowered by one.  An unacknowledged write without a
    context may have replaced anything.
    """
    context = op.body.get("context")
    if isinstance(context, dict):
        return context
    dot = mv_dot(op)
    if dot is None or op.reply is None:
        return None
    return {**op.reply["vclock"], dot.node: dot.counter - 1}


def _past(op: Operation, writes: list[Operation], reads: Reads) -> VersionVector | None:
    """What an MV write replaced (`mv_superseded`), or else a bound on it, when it is visible.

    Its sibling's `vclock` with the dot's own entry lowered by one contains its
    past.  Only a write whose value no other write on its node used can be told
    by its value; otherwise, or when it is not visible, None: it may have
    replaced anything.
    """
    known = mv_superseded(op)
    if known is not None:
        return known
    value = op.body.get("value")
    if sum(w.node == op.node and same(w.body.get("value"), value) for w in writes) != 1:
        return None
    for reply in reads.values():
        for s in reply.get("values", []):
            if owner(s["dot"][0]) == op.node and same(s["value"], value):
                return {**s["vclock"], s["dot"][0]: s["dot"][1] - 1}
    return None


def _deleted(op: Operation) -> VersionVector | None:
    """The context an `mv_delete` that may have run removed; None for a malformed one."""
    context = op.body.get("context")
    if isinstance(context, dict) and all(type(c) is int for c in context.values()):
        return context
    return None


def check_mv(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """Acknowledged writes visible, superseded or deleted; nothing deleted seen again;
    no unwritten value; no dot twice; agreement."""
    found = Found("mv", key)
    found.disagreements(reads, _mv_state)
    writes = [op for op in ops if op.type == "mv_write" and op.may_have_happened]
    deletes = [
        (op, context)
        for op in ops
        if op.type == "mv_delete" and op.may_have_happened
        for context in [_deleted(op)]
        if context is not None
    ]
    by_dot: dict[Dot, Operation] = {}
    for op in writes:
        dot = mv_dot(op)
        if dot is not None and dot in by_dot:
            found.add(
                "dot used twice", f"two writes got dot {as_json(dot.to_wire())}", by_dot[dot], op
            )
        elif dot is not None:
            by_dot[dot] = op
    for node, reply in alike(reads):
        for sibling in reply.get("values", []):
            dot, value = Dot(*sibling["dot"]), sibling["value"]
            writer = by_dot.get(dot)
            shown = f"{node} shows {as_json(value)} at dot {as_json(dot.to_wire())}"
            if writer is not None and not same(writer.body.get("value"), value):
                found.add("dot used twice", f"{shown}, acknowledged for another value", writer)
            elif writer is None and not any(
                op.indefinite and op.node == owner(dot.node) and same(op.body.get("value"), value)
                for op in writes
            ):
                found.add("never written", f"{shown}, which no write on {owner(dot.node)} made")
            for delete, context in deletes:
                if delete.ok and covers(context, dot):
                    named = (writer, delete) if writer is not None else (delete,)
                    text = f"{shown}, which an acknowledged delete covered"
                    found.add("resurrected", text, *named)
    pasts = [(op, _past(op, writes, reads)) for op in writes]
    pasts += [(op, context) for op, context in deletes]
    for dot, op in by_dot.items():
        missing = [n for n, r in reads.items() if [dot.node, dot.counter] not in _dots(r)]
        if not op.ok or not missing:
            continue
        if any(other is not op and (past is None or covers(past, dot)) for other, past in pasts):
            continue
        where = ", ".join(missing)
        found.add(
            "lost write",
            f"{as_json(dot.to_wire())} missing on {where}; no context covered it",
            op,
        )
    return found


def _dots(reply: Any) -> list[Any]:
    return [s["dot"] for s in reply.get("values", [])]


def _mv_state(reply: Any) -> Any:
    return sorted(([s["dot"], s["value"]] for s in reply.get("values", [])), key=_key)


def _key(item: Any) -> str:
    return as_json(item)
