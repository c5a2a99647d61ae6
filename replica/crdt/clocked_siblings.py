"""Siblings under client-supplied vector clocks: the conflict-detecting KV.

Source: PROTOCOL.md (`kv_put`, `kv_get`, `kv_resolve`), the classic Dynamo
scheme (DeCandia et al., "Dynamo: Amazon's Highly Available Key-value Store",
2007): the client reads a key's siblings with their clocks, and writes back
with a clock it built itself.  The server never invents a clock; it only
compares them, so a clock is stored and echoed exactly as the client sent it.

A clock is a tuple of non-negative counters indexed by position in the
cluster's node list.  Clocks of any length are accepted and a missing position
counts as zero, so `(1,)` and `(1, 0)` name the same point in history.

Invariants of a `ClockedSiblings` state:

- no stored sibling's clock strictly dominates another's (an antichain); two
  siblings may share a clock when two clients reused one on different
  replicas, because merge must keep both to stay a semilattice;
- no two siblings have the same identity, (clock without trailing zeros,
  canonical value); of such twins the one with the longer raw clock is kept;
- siblings are sorted by clock, descending lexicographically over positions
  (the order PROTOCOL.md's examples list them in), then by canonical value, so
  equal states compare equal with `==` on every replica.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from itertools import zip_longest
from typing import Any, Literal

from replica.crdt.canonical import CanonicalValue
from replica.crdt.malformed import (
    MAX_INT,
    Malformed,
    require_count,
    require_field,
    require_list,
    require_object,
)

Clock = tuple[int, ...]
PutStatus = Literal["written", "rejected", "conflict"]


class Order(Enum):
    """Where clock `a` stands relative to clock `b` in `compare(a, b)`."""

    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


def clock_from_wire(raw: Any, limit: int = MAX_INT, max_entries: int | None = None) -> Clock:
    """Validate a clock without padding or stripping it: replies echo it.

    Each entry is at most `limit`: `MAX_COUNTER` for a client's clock, `MAX_INT`
    for a peer's; a client's clock has at most `max_entries` entries.
    """
    entries = require_list(raw, "a clock")
    if max_entries is not None and len(entries) > max_entries:
        raise Malformed(f"a clock of {len(entries)} entries; at most {max_entries} are accepted")
    return tuple(require_count(entry, f"clock entry {i}", limit) for i, entry in enumerate(entries))


def compare(a: Clock, b: Clock) -> Order:
    """Position-wise comparison; a position missing from the shorter clock counts as 0."""
    below = above = False
    for x, y in zip_longest(a, b, fillvalue=0):
        if x < y:
            below = True
        elif x > y:
            above = True
    if below and above:
        return Order.CONCURRENT
    if below:
        return Order.BEFORE
    return Order.AFTER if above else Order.EQUAL


def stripped(clock: Clock) -> Clock:
    """The clock without trailing zeros: the one spelling shared by every equal clock."""
    end = len(clock)
    while end and clock[end - 1] == 0:
        end -= 1
    return clock[:end]


@dataclass(frozen=True, slots=True)
class ClockedValue(CanonicalValue):
    """One sibling.  Equality uses the canonical encoding of the value, so `1` and
    `true` (equal in Python, different in JSON) are different siblings."""

    value: Any = field(compare=False)
    clock: Clock
    _canonical: bytes = field(init=False, repr=False)

    def to_wire(self) -> dict[str, Any]:
        return {"value": self.value, "clock": list(self.clock)}


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a put did, and how many siblings the key holds afterwards."""

    status: PutStatus
    siblings: int


class NotCovered(Exception):
    """A resolve whose clock does not strictly dominate every stored sibling."""

    def __init__(self, uncovered: list[Clock]) -> None:
        super().__init__(f"clock does not cover sibling clocks {[list(c) for c in uncovered]}")
        self.uncovered = uncovered


@dataclass(frozen=True, slots=True)
class ClockedSiblings:
    """A key's concurrent values.  The empty state is the absent key."""

    siblings: tuple[ClockedValue, ...] = ()

    def put(self, value: Any, clock: Clock) -> tuple[ClockedSiblings, PutResult]:
        """Apply a client write; the rules are tried in the order the contract lists them."""
        if self.dominated_by(clock):
            return ClockedSiblings((ClockedValue(value, clock),)), PutResult("written", 1)
        incoming = ClockedValue(value, clock)
        count = len(self.siblings)
        orders = [compare(s.clock, clock) for s in self.siblings]
        if any(
            order is Order.EQUAL and s._canonical == incoming._canonical
            for s, order in zip(self.siblings, orders, strict=True)
        ):
            return self, PutResult("written", count)
        if any(order in (Order.AFTER, Order.EQUAL) for order in orders):
            return self, PutResult("rejected", count)
        # normalising drops exactly the siblings the new clock strictly dominates
        updated = ClockedSiblings(_normalise([*self.siblings, incoming]))
        return updated, PutResult("conflict", len(updated.siblings))

    def resolve(self, value: Any, clock: Clock) -> ClockedSiblings:
        """Replace every sibling by one value, but only with a clock that has seen them all.

        Raises `NotCovered` naming each distinct clock left uncovered; the state
        itself is immutable, so a refusal changes nothing.
        """
        uncovered: list[Clock] = []
        seen: set[Clock] = set()
        for s in self.siblings:
            if compare(clock, s.clock) is not Order.AFTER and stripped(s.clock) not in seen:
                seen.add(stripped(s.clock))
                uncovered.append(s.clock)
        if uncovered:
            raise NotCovered(uncovered)
        return ClockedSiblings((ClockedValue(value, clock),))

    def dominated_by(self, clock: Clock) -> bool:
        """Whether `clock` strictly dominates every sibling (vacuously true when empty)."""
        return all(compare(clock, s.clock) is Order.AFTER for s in self.siblings)

    def merge(self, other: ClockedSiblings) -> ClockedSiblings:
        """Keep the maximal siblings of the union: a join-semilattice over sibling sets."""
        if self == other:
            return self
        return ClockedSiblings(_normalise([*self.siblings, *other.siblings]))

    def to_wire(self) -> list[dict[str, Any]]:
        return [s.to_wire() for s in self.siblings]

    def to_stored(self) -> list[dict[str, Any]]:
        """The form this node's own store keeps: the wire form."""
        return self.to_wire()

    @staticmethod
    def from_wire(raw: Any) -> ClockedSiblings:
        """Validate `[{value, clock}...]` and normalise it, whatever order it came in."""
        items = require_list(raw, "siblings")
        decoded = []
        for i, item in enumerate(items):
            entry = require_object(item, f"sibling {i}")
            try:
                value = require_field(entry, "value")
                clock = clock_from_wire(require_field(entry, "clock"))
            except Malformed as exc:
                raise Malformed(f"sibling {i}: {exc}") from None
            decoded.append(ClockedValue(value, clock))
        return ClockedSiblings(_normalise(decoded))

    @staticmethod
    def from_stored(raw: Any) -> ClockedSiblings:
        """Siblings as `to_wire` wrote them to this node's own store, read back as is.

        The stored state was already normalised, so only shape and types are
        checked; a record of another shape raises `TypeError`, `ValueError` or
        `KeyError`.  State from a peer or a client must go through `from_wire`.
        """
        if type(raw) is not list:
            raise TypeError("KV siblings must be an array")
        return ClockedSiblings(tuple([_stored_value(item) for item in raw]))


def _stored_value(item: dict[str, Any]) -> ClockedValue:
    clock = item["clock"]
    if type(clock) is not list or any(type(entry) is not int for entry in clock):
        raise TypeError("a KV sibling's clock must be an array of counters")
    return ClockedValue(item["value"], tuple(clock))


def _normalise(values: Iterable[ClockedValue]) -> tuple[ClockedValue, ...]:
    """Dedupe by identity, drop strictly dominated siblings, sort canonically."""
    by_identity: dict[tuple[Clock, bytes], ClockedValue] = {}
    for v in values:
        identity = (stripped(v.clock), v._canonical)
        kept = by_identity.get(identity)
        if kept is None or len(v.clock) > len(kept.clock):
            by_identity[identity] = v
    unique = list(by_identity.values())
    maximal = [
        v for v in unique if not any(compare(w.clock, v.clock) is Order.AFTER for w in unique)
    ]
    # Two sorts, the second stable, give clock descending and then value ascending.
    maximal.sort(key=lambda v: v._canonical)
    maximal.sort(key=lambda v: stripped(v.clock), reverse=True)
    return tuple(maximal)
