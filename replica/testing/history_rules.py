"""The rules a converged history must satisfy, one function per data type.

Each rule gets one key's operations, in invocation order, and every node's
final read of that key (the reply body of `mv_read`, `kv_get`, `lww_read`,
`mvcc_get` or `counter_read`), and returns the violations it finds.  A rule
never guesses against the system: an operation whose outcome is unknown (a
timeout, a lost connection, error 0 or 13) may or may not have happened, so it
can explain what a read shows but is never required to show up.  Soundness
first, as in Knossos and Elle: a correct node must never be reported.  The
record types (`Operation`, `Outcome`, `Violation`) live here so the rules need
nothing of the recorder; `replica.testing.history` re-exports them.

Source: PROTOCOL.md for the semantics of each keyspace; the dotted version
vectors of Preguiça et al. (2010) for what "superseded" means for an MV write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from itertools import zip_longest
from typing import Any

from replica.crdt.canonical import canonical
from replica.crdt.version_vector import Dot, VersionVector, covers

Reads = Mapping[str, Any]
"""One key's final reads: node id to the reply body that node gave."""

INDEFINITE_CODES = frozenset({0, 13})
"""Error codes after which a write may still have happened (timeout, crash)."""

_SUBSET_LIMIT = 4096
"""Most distinct partial sums the counter rule tracks before it falls back to bounds."""


class Outcome(Enum):
    """How an operation ended: `OK` and `FAILED` are definite, the others are not."""

    PENDING = "pending"
    OK = "ok"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass
class Operation:
    """One client request and how it ended; `index` is its place in the history."""

    index: int
    node: str
    type: str
    key: str | None
    body: dict[str, Any]
    outcome: Outcome = Outcome.PENDING
    reply: dict[str, Any] | None = None
    code: int | None = None
    text: str = ""

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

    def describe(self) -> str:
        """One line naming the operation: index, node, type, key, value and what came back."""
        parts = [f"#{self.index} {self.node} {self.type} key={self.key!r}"]
        for name in ("value", "delta", "timestamp", "clock", "context"):
            if name in self.body:
                parts.append(f"{name}={_json(self.body[name])}")
        if self.ok:
            dot = mv_dot(self)
            if dot is not None:
                parts.append(f"dot={_json(dot.to_wire())}")
            parts.append(f"-> ok {_json(_fields(self.reply))}")
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


Rule = Callable[[str, list[Operation], Reads], list[Violation]]


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
    if sum(w.node == op.node and _same(w.body.get("value"), value) for w in writes) != 1:
        return None
    for reply in reads.values():
        for s in reply.get("values", []):
            if owner(s["dot"][0]) == op.node and _same(s["value"], value):
                return {**s["vclock"], s["dot"][0]: s["dot"][1] - 1}
    return None


def check_mv(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """Acknowledged writes visible or superseded; no unwritten value; no dot twice; agreement."""
    found = _Found("mv", key)
    found.disagreements(reads, _mv_state)
    writes = [op for op in ops if op.type == "mv_write" and op.may_have_happened]
    by_dot: dict[Dot, Operation] = {}
    for op in writes:
        dot = mv_dot(op)
        if dot is not None and dot in by_dot:
            found.add(
                "dot used twice", f"two writes got dot {_json(dot.to_wire())}", by_dot[dot], op
            )
        elif dot is not None:
            by_dot[dot] = op
    for node, reply in _alike(reads):
        for sibling in reply.get("values", []):
            dot, value = Dot(*sibling["dot"]), sibling["value"]
            writer = by_dot.get(dot)
            shown = f"{node} shows {_json(value)} at dot {_json(dot.to_wire())}"
            if writer is not None and not _same(writer.body.get("value"), value):
                found.add("dot used twice", f"{shown}, acknowledged for another value", writer)
            elif writer is None and not any(
                op.indefinite and op.node == owner(dot.node) and _same(op.body.get("value"), value)
                for op in writes
            ):
                found.add("never written", f"{shown}, which no write on {owner(dot.node)} made")
    pasts = [(op, _past(op, writes, reads)) for op in writes]
    for dot, op in by_dot.items():
        missing = [n for n, r in reads.items() if [dot.node, dot.counter] not in _dots(r)]
        if not op.ok or not missing:
            continue
        if any(other is not op and (past is None or covers(past, dot)) for other, past in pasts):
            continue
        where = ", ".join(missing)
        found.add(
            "lost write", f"{_json(dot.to_wire())} missing on {where}; no context covered it", op
        )
    return found


def check_lww(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """The greatest acknowledged or unfinished `(timestamp, replica)` wins everywhere."""
    found = _Found("lww", key)
    found.disagreements(reads, _lww_state)
    writes = [op for op in ops if op.type == "lww_write" and op.may_have_happened]
    best = max((op for op in writes if op.ok and op.reply), key=_lww_rank, default=None)
    for node, reply in _alike(reads):
        if reply.get("type") == "error":
            if best is not None:
                found.add("lost write", f"{node} answers error {reply.get('code')}", best)
            continue
        rank = (reply["timestamp"], reply["replica"])
        shown = f"{node} shows {_json(reply['value'])} at {_json(rank)}"
        makers = [op for op in writes if _lww_could_make(op, reply)]
        if not makers:
            found.add("never written", f"{shown}, which no write made")
        elif best is not None and rank < _lww_rank(best):
            found.add("lost write", f"{shown}, below the acknowledged winner", best, *makers)
    return found


def check_mvcc(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """Each acknowledged version readable at its timestamp, unless collected; no unwritten value.

    `reads` maps a node to its replies keyed by read timestamp (None: the newest).
    The horizon is the greatest `before` of a recorded `mvcc_gc`; the automatic
    one (`mvcc_retention_ms`) is not in the history.
    """
    found = _Found("mvcc", key)
    writes = [op for op in ops if op.type == "mvcc_put" and op.may_have_happened]
    acked = [op for op in writes if op.ok and op.reply]
    gcs = [op.body.get("before", -1) for op in ops if op.type == "mvcc_gc" and op.may_have_happened]
    horizon = max(gcs, default=-1)
    by_ts: dict[Any, dict[str, Any]] = {}
    for node, replies in reads.items():
        for ts, reply in replies.items():
            by_ts.setdefault(ts, {})[node] = reply
            if reply.get("type") != "error" and not any(
                _mvcc_could_make(op, reply["value"], reply["as_of_timestamp"]) for op in writes
            ):
                found.add("never written", f"{node} reads {_json(_fields(reply))}")
    for ts, replies in by_ts.items():
        found.disagreements(replies, _mvcc_state, f" at read timestamp {ts}")
    for op in acked:
        ts = _stamp(op)
        if ts < horizon:
            continue
        if ts not in by_ts:
            found.add("unread", f"no node was read at timestamp {ts}", op)
        for node, reply in by_ts.get(ts, {}).items():
            # Another write at the same timestamp may win there (the greater origin).
            if reply.get("as_of_timestamp") != ts:
                found.add("lost write", f"{node} reads {_json(_fields(reply))} at {ts}", op)
    newest = max(acked, key=_stamp, default=None)
    for node, reply in by_ts.get(None, {}).items():
        if newest is not None and reply.get("as_of_timestamp", -1) < _stamp(newest):
            found.add("lost write", f"{node}'s newest is {_json(_fields(reply))}", newest)
    return found


def check_kv(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """Written puts and resolves present or dominated by a present clock; none unwritten."""
    found = _Found("kv", key)
    found.disagreements(reads, _kv_state)
    writes = [op for op in ops if op.type in ("kv_put", "kv_resolve") and op.may_have_happened]
    kept = [op for op in writes if op.ok and (op.reply or {}).get("status") in _KV_KEPT]
    for node, reply in _alike(reads):
        present = reply.get("values", [])
        for s in present:
            if not any(_kv_is(op, s) for op in writes):
                shown = f"{_json(s['value'])} with clock {_json(s['clock'])}"
                found.add("never written", f"{node} shows {shown}, which no write made")
        for op in kept:
            clock = op.body.get("clock", [])
            if not any(_kv_is(op, s) or _dominates(s["clock"], clock) for s in present):
                found.add("lost write", f"{node} shows neither it nor a clock above it", op)
    return found


def check_counter(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """The total is every acknowledged delta plus some of the unfinished ones; agreement."""
    found = _Found("counter", key)
    found.disagreements(reads, _counter_state)
    adds = [op for op in ops if op.type == "counter_add" and op.may_have_happened]
    base = sum(op.body.get("delta", 0) for op in adds if op.ok)
    unsure = [op.body.get("delta", 0) for op in adds if op.indefinite]
    sums = _subset_sums(unsure)
    low = base + sum(d for d in unsure if d < 0)
    high = base + sum(d for d in unsure if d > 0)
    if sums is None:
        expected = f"between {low} and {high}"
    else:
        expected = f"{base} plus a subset of the unfinished deltas {unsure}"
    for node, reply in _alike(reads):
        value = reply.get("value")
        if type(value) is not int:
            found.add("wrong total", f"{node} answers {_json(_fields(reply))}", *adds[:20])
        elif not (low <= value <= high if sums is None else value - base in sums):
            found.add("wrong total", f"{node} reads {value}, expected {expected}", *adds[:20])
    return found


RULES: dict[str, Rule] = {
    "mv": check_mv,
    "lww": check_lww,
    "mvcc": check_mvcc,
    "kv": check_kv,
    "counter": check_counter,
}
"""The rule of each keyspace, by the prefix of its message types."""

_KV_KEPT = frozenset({"written", "conflict", "resolved"})
"""The statuses of a `kv_put` or `kv_resolve` that stored its value."""


class _Found(list[Violation]):
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
            text = "; ".join(f"{', '.join(n)} read {_json(shown[e])}" for e, n in groups.items())
            self.add("nodes disagree", text + where)


def _alike(reads: Reads) -> list[tuple[str, Any]]:
    """The distinct replies with the nodes that gave each, so agreeing nodes are named once."""
    groups: dict[bytes, tuple[list[str], Any]] = {}
    for node, reply in reads.items():
        groups.setdefault(canonical(reply), ([], reply))[0].append(node)
    return [(", ".join(nodes), reply) for nodes, reply in groups.values()]


def _dots(reply: Mapping[str, Any]) -> list[Any]:
    return [s["dot"] for s in reply.get("values", [])]


def _stamp(op: Operation) -> int:
    assert op.reply is not None
    return int(op.reply["timestamp"])


def _mv_state(reply: Any) -> Any:
    return sorted(([s["dot"], s["value"]] for s in reply.get("values", [])), key=canonical)


def _lww_state(reply: Any) -> Any:
    if reply.get("type") == "error":
        return {"error": reply.get("code")}
    return [reply["value"], reply["timestamp"], reply["replica"]]


def _mvcc_state(reply: Any) -> Any:
    if reply.get("type") == "error":
        return {"error": reply.get("code")}
    return [reply["value"], reply["as_of_timestamp"]]


def _kv_state(reply: Any) -> Any:
    return sorted(
        ([_stripped(s["clock"]), s["value"]] for s in reply.get("values", [])), key=canonical
    )


def _counter_state(reply: Any) -> Any:
    return reply.get("value")


def _lww_rank(op: Operation) -> tuple[int, str]:
    assert op.reply is not None
    return op.reply["timestamp"], op.reply["replica"]


def _lww_could_make(op: Operation, reply: Mapping[str, Any]) -> bool:
    if not _same(op.body.get("value"), reply["value"]):
        return False
    if op.ok and op.reply is not None:
        return _lww_rank(op) == (reply["timestamp"], reply["replica"])
    given = op.body.get("timestamp")
    return op.node == reply["replica"] and given in (None, reply["timestamp"])


def _mvcc_could_make(op: Operation, value: Any, timestamp: int) -> bool:
    if not _same(op.body.get("value"), value):
        return False
    if op.ok and op.reply is not None:
        return bool(op.reply["timestamp"] == timestamp)
    return op.body.get("timestamp") in (None, timestamp)


def _kv_is(op: Operation, sibling: Mapping[str, Any]) -> bool:
    return _stripped(op.body.get("clock", [])) == _stripped(sibling["clock"]) and _same(
        op.body.get("value"), sibling["value"]
    )


def _dominates(a: Iterable[int], b: Iterable[int]) -> bool:
    pairs = list(zip_longest(a, b, fillvalue=0))
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def _stripped(clock: Iterable[int]) -> list[int]:
    out = list(clock)
    while out and out[-1] == 0:
        out.pop()
    return out


def _subset_sums(deltas: list[int]) -> set[int] | None:
    """Every sum of a subset of `deltas`, or None when there are too many to track."""
    sums = {0}
    for d in deltas:
        sums |= {s + d for s in sums}
        if len(sums) > _SUBSET_LIMIT:
            return None
    return sums


def _same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def _fields(reply: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (reply or {}).items() if k not in ("type", "msg_id", "in_reply_to")}


def _json(value: Any) -> str:
    return canonical(value).decode()
