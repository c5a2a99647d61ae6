"""The history rules of the client-clocked KV and the PN-counter, deletes included.

KV (PROTOCOL.md): a put or resolve that stored its value stays visible unless
a present sibling's clock, or a delete's clock that may have been applied,
dominates its clock; a sibling whose clock an acknowledged delete strictly
dominates is resurrected.  Counter: the total is every acknowledged change
plus some of the unfinished ones, where a `counter_delete` subtracts what its
node had seen, which the history does not say; see `counter_range`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import pairwise, zip_longest
from typing import Any

from replica.testing.history_record import (
    Found,
    Operation,
    Reads,
    Violation,
    alike,
    as_json,
    fields,
    same,
)

_SUBSET_LIMIT = 4096
"""Most distinct partial sums the counter rule tracks before it falls back to bounds."""

_KV_KEPT = frozenset({"written", "conflict", "resolved"})
"""The statuses of a `kv_put` or `kv_resolve` that stored its value."""


def check_kv(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """Written puts and resolves present or dominated by a present or deleted clock;
    nothing an acknowledged delete dominated; none unwritten."""
    found = Found("kv", key)
    found.disagreements(reads, _kv_state)
    writes = [op for op in ops if op.type in ("kv_put", "kv_resolve") and op.may_have_happened]
    kept = [op for op in writes if op.ok and (op.reply or {}).get("status") in _KV_KEPT]
    deletes = [
        op
        for op in ops
        if op.type == "kv_delete"
        and (op.indefinite or (op.ok and (op.reply or {}).get("status") == "deleted"))
    ]
    for node, reply in alike(reads):
        present = reply.get("values", [])
        for s in present:
            shown = f"{as_json(s['value'])} with clock {as_json(s['clock'])}"
            if not any(_kv_is(op, s) for op in writes):
                found.add("never written", f"{node} shows {shown}, which no write made")
            for d in deletes:
                if d.ok and _dominates(d.body.get("clock", []), s["clock"]):
                    makers = [op for op in writes if _kv_is(op, s)]
                    text = f"{node} shows {shown}, below an acknowledged delete's clock"
                    found.add("resurrected", text, *makers, d)
        for op in kept:
            clock = op.body.get("clock", [])
            if any(_kv_is(op, s) or _dominates(s["clock"], clock) for s in present):
                continue
            if any(_dominates(d.body.get("clock", []), clock) for d in deletes):
                continue
            found.add("lost write", f"{node} shows neither it nor a clock above it", op)
    return found


def check_counter(key: str, ops: list[Operation], reads: Reads) -> list[Violation]:
    """The total is what `counter_range` allows; agreement."""
    found = Found("counter", key)
    found.disagreements(reads, _counter_state)
    changes = [
        op for op in ops if op.type in ("counter_add", "counter_delete") and op.may_have_happened
    ]
    allowed, expected = counter_range(changes)
    for node, reply in alike(reads):
        value = reply.get("value")
        if type(value) is not int:
            found.add("wrong total", f"{node} answers {as_json(fields(reply))}", *changes[:20])
        elif not allowed(value):
            found.add("wrong total", f"{node} reads {value}, expected {expected}", *changes[:20])
    return found


def counter_range(changes: list[Operation]) -> tuple[Any, str]:
    """What a converged total may be, as a test and its words.

    Without deletes: every acknowledged delta plus a subset of the unfinished
    ones (or the bounds of those subsets past `_SUBSET_LIMIT`).  A delete takes
    away the total its node had seen, some subset of the changes that may
    have reached it, so it contributes a range: a delete that no other delete
    overlapped in time saw a subset of the changes invoked before it ended (an
    unfinished one: of all), and subtracts between the lowest and highest sums
    of those.  When deletes overlap, their order of effect is unknown and the
    range widens to what any order allows: each delete at most doubles the
    magnitude seen so far.  Both keep the check sound (no false alarm) at the
    cost of letting through a wrong total inside the range.
    """
    adds = [op for op in changes if op.type == "counter_add"]
    resets = [op for op in changes if op.type == "counter_delete"]
    if not resets:
        return _adds_only(adds)
    span = {op.index: (_delta(op), _delta(op)) for op in adds}
    if _overlapping(resets):
        reach = sum(abs(_delta(op)) for op in adds) * (2 ** len(resets) - 1)
        low, high = _sum_range(adds, span)
        low, high = low - reach, high + reach
        return (lambda v: low <= v <= high), f"between {low} and {high} (overlapping deletes)"
    for reset in resets:
        limit = reset.seen_before
        seen = [
            span[op.index]
            for op in changes
            if op.index in span and (limit is None or op.index < limit)
        ]
        span[reset.index] = (-sum(max(0, h) for _, h in seen), -sum(min(0, lo) for lo, _ in seen))
    low, high = _sum_range(changes, span)
    return (lambda v: low <= v <= high), f"between {low} and {high} (deletes)"


def _adds_only(adds: list[Operation]) -> tuple[Any, str]:
    base = sum(_delta(op) for op in adds if op.ok)
    unsure = [_delta(op) for op in adds if op.indefinite]
    sums = _subset_sums(unsure)
    if sums is None:
        low = base + sum(d for d in unsure if d < 0)
        high = base + sum(d for d in unsure if d > 0)
        return (lambda v: low <= v <= high), f"between {low} and {high}"
    expected = f"{base} plus a subset of the unfinished deltas {unsure}"
    return (lambda v: v - base in sums), expected


def _sum_range(changes: list[Operation], span: Mapping[int, tuple[int, int]]) -> tuple[int, int]:
    """Lowest and highest total: every acknowledged change, any of the unfinished ones."""
    low = high = 0
    for op in changes:
        lo, hi = span[op.index]
        low += lo if op.ok else min(0, lo)
        high += hi if op.ok else max(0, hi)
    return low, high


def _overlapping(resets: list[Operation]) -> bool:
    """Whether a delete may have taken effect while another was under way."""
    for a, b in pairwise(resets):
        limit = a.seen_before
        if limit is None or b.index < limit:
            return True
    return False


def _delta(op: Operation) -> int:
    delta = op.body.get("delta", 0)
    return delta if type(delta) is int else 0


def _kv_is(op: Operation, sibling: Mapping[str, Any]) -> bool:
    return _stripped(op.body.get("clock", [])) == _stripped(sibling["clock"]) and same(
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


def _kv_state(reply: Any) -> Any:
    return sorted(
        ([_stripped(s["clock"]), s["value"]] for s in reply.get("values", [])), key=as_json
    )


def _counter_state(reply: Any) -> Any:
    return reply.get("value")


def _subset_sums(deltas: list[int]) -> set[int] | None:
    """Every sum of a subset of `deltas`, or None when there are too many to track."""
    sums = {0}
    for d in deltas:
        sums |= {s + d for s in sums}
        if len(sums) > _SUBSET_LIMIT:
            return None
    return sums
