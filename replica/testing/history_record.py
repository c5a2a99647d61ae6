"""The record the history checker works on: operations, their outcomes, violations.

An `Operation` is one client request and how it ended; a `Violation` is one
broken rule with the operations involved.  `Found` collects one rule's
violations for one key.  The rules (`replica.testing.history_rules` and the
modules it gathers) need nothing else of the recorder, so a history can be
built by hand as readily as by a `RecordingClient`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from replica.crdt.canonical import canonical
from replica.crdt.version_vector import Dot

Reads = Mapping[str, Any]
"""One key's final reads: node id to the reply body that node gave."""

INDEFINITE_CODES = frozenset({0, 11, 13})
"""Error codes after which a write may still have happened: timeout, too few
nodes for `w` (the write is kept and spreads), crash."""


class Outcome(Enum):
    """How an operation ended: `OK` and `FAILED` are definite, the others are not."""

    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass
class Operation:
    """One client request and how it ended; `index` is its place in the history.

    `ended` is how many operations had been invoked when it ended (None while
    pending): an operation invoked later cannot have been seen by it.
    """

    index: int
    node: str
    type: str
    key: str | None
    body: dict[str, Any]
    outcome: Outcome = Outcome.PENDING
    reply: dict[str, Any] | None = None
    code: int | None = None
    text: str = ""
    ended: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @property
    def indefinite(self) -> bool:
        """Whether it may or may not have taken effect (never completed, or completed unknown)."""
        return self.outcome in (Outcome.PENDING, Outcome.UNKNOWN)

    @property
    def may_have_happened(self) -> bool:
        return self.ok or self.indefinite

    @property
    def seen_before(self) -> int | None:
        """Operations with an index below this may have taken effect before it; None: any.

        An indefinite request may still run after its client gave up on it.
        """
        return None if self.indefinite else self.ended

    def describe(self) -> str:
        """One line naming the operation: index, node, type, key, value and what came back."""
        parts = [f"#{self.index} {self.node} {self.type} key={self.key!r}"]
        for name in ("value", "delta", "timestamp", "clock", "context", "w", "r"):
            if name in self.body:
                parts.append(f"{name}={as_json(self.body[name])}")
        if self.ok:
            dot = mv_dot(self)
            if dot is not None:
                parts.append(f"dot={as_json(dot.to_wire())}")
            parts.append(f"-> ok {as_json(fields(self.reply))}")
        elif self.outcome is Outcome.FAILED:
            parts.append(f"-> error {self.code} {self.text}".rstrip())
        else:
            parts.append(f"-> {self.outcome.value} {self.text}".rstrip())
        return " ".join(parts)


@dataclass(frozen=True)
class Violation:
    """One broken rule: which keyspace and key, what is wrong, and the operations involved."""

    kind: str
    family: str
    key: str
    text: str
    operations: tuple[Operation, ...] = field(default=(), compare=False)

    def describe(self) -> str:
        lines = [f"{self.family} key {self.key!r}: {self.kind}: {self.text}"]
        lines += [f"    {op.describe()}" for op in self.operations]
        return "\n".join(lines)


def owner(actor: str) -> str:
    """The node an MV dot's actor belongs to: a durable node writes as `<id>~<incarnation>`."""
    return actor.split("~", 1)[0]


def mv_dot(op: Operation) -> Dot | None:
    """The dot an acknowledged `mv_write` made: its sibling's in the reply (actor and counter)."""
    if op.type != "mv_write" or not op.ok or op.reply is None:
        return None
    vclock = op.reply.get("vclock")
    for sibling in op.reply.get("values", []):
        dot = sibling.get("dot") if isinstance(sibling, dict) else None
        if dot and sibling["vclock"] == vclock and owner(dot[0]) == op.node:
            return Dot(*dot)
    # No sibling says it: the one actor of the vclock that belongs to the node, if just one.
    mine = [(a, c) for a, c in (vclock or {}).items() if owner(a) == op.node]
    return Dot(*mine[0]) if len(mine) == 1 and isinstance(mine[0][1], int) else None


Rule = Callable[[str, list[Operation], Reads], list[Violation]]


class Found(list[Violation]):
    """The violations one rule found for one key."""

    def __init__(self, family: str, key: str) -> None:
        super().__init__()
        self.family, self.key = family, key

    def add(self, kind: str, text: str, *ops: Operation) -> None:
        self.append(Violation(kind, self.family, self.key, text, ops))

    def disagreements(self, reads: Reads, state: Callable[[Any], Any], where: str = "") -> None:
        """One violation naming each group of nodes when the nodes' reads are not all equal."""
        groups: dict[bytes, list[str]] = {}
        shown: dict[bytes, Any] = {}
        for node, reply in reads.items():
            seen = state(reply)
            encoded = canonical(seen)
            groups.setdefault(encoded, []).append(node)
            shown[encoded] = seen
        if len(groups) > 1:
            text = "; ".join(f"{', '.join(n)} read {as_json(shown[e])}" for e, n in groups.items())
            self.add("nodes disagree", text + where)


def alike(reads: Reads) -> list[tuple[str, Any]]:
    """The distinct replies with the nodes that gave each, so agreeing nodes are named once."""
    groups: dict[bytes, tuple[list[str], Any]] = {}
    for node, reply in reads.items():
        groups.setdefault(canonical(reply), ([], reply))[0].append(node)
    return [(", ".join(nodes), reply) for nodes, reply in groups.values()]


def is_error(reply: Mapping[str, Any], code: int | None = None) -> bool:
    """Whether `reply` is an error (with `code`, when given)."""
    return reply.get("type") == "error" and (code is None or reply.get("code") == code)


def stamp(op: Operation) -> int:
    """The timestamp an acknowledged LWW or MVCC write or delete was answered with."""
    assert op.reply is not None
    return int(op.reply["timestamp"])


def same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def fields(reply: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (reply or {}).items() if k not in ("type", "msg_id", "in_reply_to")}


def as_json(value: Any) -> str:
    return canonical(value).decode()
