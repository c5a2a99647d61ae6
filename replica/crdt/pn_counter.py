"""PN-counter: a counter every replica may add to at once, increments and decrements alike.

Source: Shapiro et al., "A comprehensive study of Convergent and Commutative
Replicated Data Types" (2011), the PN-Counter; riak_dt's `riak_dt_pncounter`
and Jylis's PNCOUNT.

The state is two grow-only maps from actor to total: what each actor added
(`p`) and what it took away (`n`).  An actor only ever raises its own
entries, so merge is the entry-wise maximum of both maps (a join), and the
value is the sum of `p` less the sum of `n`.

Invariants: every total is a positive integer of at most `MAX_TOTAL`, and no
map holds a zero entry, so equal counters are equal states.  Bounding each
actor's totals keeps the value exact in a double and within 64 bits for any
cluster of fewer than 1,024 actors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from replica.crdt.malformed import MAX_COUNTER, require_count, require_object

MAX_TOTAL = MAX_COUNTER
"""The most one actor may add, or take away, over the counter's whole life."""

Totals = Mapping[str, int]


class TotalTooLarge(Exception):
    """An addition that would take an actor's total past `MAX_TOTAL`; nothing changed."""

    def __init__(self, total: int) -> None:
        super().__init__(f"this node's total would be {total}, above {MAX_TOTAL}")
        self.total = total


@dataclass(frozen=True, slots=True)
class PNCounter:
    """Per-actor totals of increments (`p`) and decrements (`n`); never mutated."""

    p: Totals = field(default_factory=dict)
    n: Totals = field(default_factory=dict)

    @property
    def value(self) -> int:
        return sum(self.p.values()) - sum(self.n.values())

    def add(self, actor: str, delta: int) -> PNCounter:
        """The counter after `actor` adds `delta` (negative: takes away); raises `TotalTooLarge`."""
        if delta == 0:
            return self
        side = self.p if delta > 0 else self.n
        total = side.get(actor, 0) + abs(delta)
        if total > MAX_TOTAL:
            raise TotalTooLarge(total)
        raised = {**side, actor: total}
        return PNCounter(raised, self.n) if delta > 0 else PNCounter(self.p, raised)

    def reset(self, actor: str) -> PNCounter:
        """The counter after `actor` takes away exactly the total it observes (a delete).

        What other actors add concurrently is not observed here, so it survives
        the reset once the two merge; raises `TotalTooLarge` like `add`.
        """
        return self.add(actor, -self.value)

    def merge(self, other: PNCounter) -> PNCounter:
        """The entry-wise maximum of both maps."""
        if other == self:
            return self
        return PNCounter(_join(self.p, other.p), _join(self.n, other.n))

    def to_wire(self) -> dict[str, Any]:
        return {"p": dict(self.p), "n": dict(self.n)}

    def to_stored(self) -> dict[str, Any]:
        """The form this node's own store keeps: the wire form."""
        return self.to_wire()

    @staticmethod
    def from_wire(raw: Any) -> PNCounter:
        """A peer's counter, validated: totals from 1 to `MAX_TOTAL` (zeros dropped)."""
        obj = require_object(raw, "a PN-counter")
        return PNCounter(_totals(obj.get("p", {}), "p"), _totals(obj.get("n", {}), "n"))

    @staticmethod
    def from_stored(raw: Any) -> PNCounter:
        """A counter as `to_stored` wrote it to this node's own store: types checked only."""
        p, n = raw["p"], raw["n"]
        if type(p) is not dict or type(n) is not dict:
            raise TypeError("a PN-counter must have maps 'p' and 'n'")
        if not all(type(total) is int for total in (*p.values(), *n.values())):
            raise TypeError("a PN-counter's totals must be integers")
        return PNCounter(p, n)


def _join(a: Totals, b: Totals) -> Totals:
    if not b:
        return a
    out = dict(a)
    for actor, total in b.items():
        if total > out.get(actor, 0):
            out[actor] = total
    return out


def _totals(raw: Any, name: str) -> dict[str, int]:
    totals = require_object(raw, f"field {name!r}")
    out: dict[str, int] = {}
    for actor, total in totals.items():
        if require_count(total, f"field {name!r}'s entry {actor!r}", MAX_TOTAL):
            out[actor] = total
    return out
