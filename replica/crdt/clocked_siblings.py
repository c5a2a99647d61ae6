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
  equal states compare equal with `==` on every replica;
- `deleted` holds the clocks of deletes (tombstones) that still matter: an
  antichain, one spelling per clock, sorted like the siblings; no sibling is
  strictly dominated by a tombstone, and no tombstone is dominated by or equal
  to a sibling's clock (that sibling removes the same siblings wherever it
  goes: strict domination is transitive).

A delete removes the siblings its clock strictly dominates and keeps its clock
as a tombstone, so a peer still holding one of them cannot bring it back, and
a put at or below it is stale.  Tombstones form a set, not one pointwise
maximum: the maximum of two concurrent deletes' clocks would dominate a
sibling that neither delete had seen.
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
DeleteStatus = Literal["deleted", "rejected"]


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
    """A key's concurrent values and tombstone clocks.  The empty state is the absent key."""

    siblings: tuple[ClockedValue, ...] = ()
    deleted: tuple[Clock, ...] = ()

    def put(self, value: Any, clock: Clock) -> tuple[ClockedSiblings, PutResult]:
        """Apply a client write; the rules are tried in the order the contract lists them.

        A clock at or below a tombstone is stale like one at or below a sibling.
        """
        count = len(self.siblings)
        if self.deleted and any(_at_or_after(d, clock) for d in self.deleted):
            return self, PutResult("rejected", count)
        if self.dominated_by(clock):
            return self._keeping((ClockedValue(value, clock),)), PutResult("written", 1)
        incoming = ClockedValue(value, clock)
        orders = [compare(s.clock, clock) for s in self.siblings]
        if any(
            order is Order.EQUAL and s._canonical == incoming._canonical
            for s, order in zip(self.siblings, orders, strict=True)
        ):
            return self, PutResult("written", count)
        if any(order in (Order.AFTER, Order.EQUAL) for order in orders):
            return self, PutResult("rejected", count)
        # normalising drops exactly the siblings the new clock strictly dominates
        updated = self._keeping(_normalise([*self.siblings, incoming]))
        return updated, PutResult("conflict", len(updated.siblings))

    def resolve(self, value: Any, clock: Clock) -> ClockedSiblings:
        """Replace every sibling by one value, but only with a clock that has seen them all.

        Raises `NotCovered` naming each distinct clock left uncovered (a
        tombstone at or after `clock` among them); the state itself is
        immutable, so a refusal changes nothing.
        """
        uncovered: list[Clock] = []
        seen: set[Clock] = set()
        for s in self.siblings:
            if compare(clock, s.clock) is not Order.AFTER and stripped(s.clock) not in seen:
                seen.add(stripped(s.clock))
                uncovered.append(s.clock)
        uncovered.extend(d for d in self.deleted if _at_or_after(d, clock))
        if uncovered:
            raise NotCovered(uncovered)
        return self._keeping((ClockedValue(value, clock),))

    def delete(self, clock: Clock) -> tuple[ClockedSiblings, DeleteStatus]:
        """A client's delete: drop the siblings `clock` strictly dominates, keep it as a tombstone.

        Stale like a put (`rejected`, nothing changed) when a sibling's clock or
        a tombstone is after it or equal to it, except that repeating a
        tombstone's own clock is a retry and answers `deleted`.
        """
        if any(compare(d, clock) is Order.EQUAL for d in self.deleted):
            return self, "deleted"
        if any(_at_or_after(s.clock, clock) for s in self.siblings) or any(
            compare(d, clock) is Order.AFTER for d in self.deleted
        ):
            return self, "rejected"
        kept = tuple(s for s in self.siblings if compare(clock, s.clock) is not Order.AFTER)
        return ClockedSiblings(kept, _tombstones([*self.deleted, clock], kept)), "deleted"

    def dominated_by(self, clock: Clock) -> bool:
        """Whether `clock` strictly dominates every sibling (vacuously true when empty)."""
        return all(compare(clock, s.clock) is Order.AFTER for s in self.siblings)

    def merge(self, other: ClockedSiblings) -> ClockedSiblings:
        """Keep the maximal siblings of the union that no tombstone of either side dominates."""
        if self == other:
            return self
        siblings = _normalise([*self.siblings, *other.siblings])
        if not self.deleted and not other.deleted:
            return ClockedSiblings(siblings)
        return _with_tombstones(siblings, [*self.deleted, *other.deleted])

    def _keeping(self, siblings: tuple[ClockedValue, ...]) -> ClockedSiblings:
        """New siblings (none below a tombstone), with the tombstones still needed beside them."""
        if not self.deleted:
            return ClockedSiblings(siblings)
        return ClockedSiblings(siblings, _tombstones(self.deleted, siblings))

    def to_wire(self) -> list[dict[str, Any]]:
        """Each sibling's `{value, clock}`, then each tombstone as `{deleted: clock}`.

        A tombstone is one more element of the set, so a state split across
        messages is still a set of valid deltas.
        """
        wire = [s.to_wire() for s in self.siblings]
        wire.extend({"deleted": list(clock)} for clock in self.deleted)
        return wire

    def to_stored(self) -> list[dict[str, Any]]:
        """The form this node's own store keeps: the wire form."""
        return self.to_wire()

    @staticmethod
    def from_wire(raw: Any) -> ClockedSiblings:
        """Validate `[{value, clock} or {deleted}...]` and normalise it, whatever its order."""
        items = require_list(raw, "siblings")
        decoded = []
        deleted = []
        for i, item in enumerate(items):
            entry = require_object(item, f"sibling {i}")
            try:
                if "deleted" in entry:
                    deleted.append(clock_from_wire(entry["deleted"]))
                    continue
                value = require_field(entry, "value")
                clock = clock_from_wire(require_field(entry, "clock"))
            except Malformed as exc:
                raise Malformed(f"sibling {i}: {exc}") from None
            decoded.append(ClockedValue(value, clock))
        return _with_tombstones(_normalise(decoded), deleted)

    @staticmethod
    def from_stored(raw: Any) -> ClockedSiblings:
        """Siblings as `to_wire` wrote them to this node's own store, read back as is.

        The stored state was already normalised, so only shape and types are
        checked; a record of another shape raises `TypeError`, `ValueError` or
        `KeyError`.  State from a peer or a client must go through `from_wire`.
        """
        if type(raw) is not list:
            raise TypeError("KV siblings must be an array")
        siblings = [_stored_value(item) for item in raw if "deleted" not in item]
        if len(siblings) == len(raw):
            return ClockedSiblings(tuple(siblings))
        deleted = [_stored_clock(item["deleted"]) for item in raw if "deleted" in item]
        return ClockedSiblings(tuple(siblings), tuple(deleted))


def _stored_value(item: dict[str, Any]) -> ClockedValue:
    return ClockedValue(item["value"], _stored_clock(item["clock"]))


def _stored_clock(clock: Any) -> Clock:
    if type(clock) is not list or any(type(entry) is not int for entry in clock):
        raise TypeError("a KV sibling's or tombstone's clock must be an array of counters")
    return tuple(clock)


def _at_or_after(a: Clock, b: Clock) -> bool:
    return compare(a, b) in (Order.AFTER, Order.EQUAL)


def _with_tombstones(siblings: tuple[ClockedValue, ...], deleted: list[Clock]) -> ClockedSiblings:
    """Normalised siblings without those a tombstone strictly dominates, and the tombstones."""
    if deleted:
        siblings = tuple(
            s for s in siblings if not any(compare(d, s.clock) is Order.AFTER for d in deleted)
        )
    return ClockedSiblings(siblings, _tombstones(deleted, siblings))


def _tombstones(deleted: Iterable[Clock], siblings: tuple[ClockedValue, ...]) -> tuple[Clock, ...]:
    """The tombstones still needed: maximal, one spelling each, none at or below a sibling."""
    by_clock: dict[Clock, Clock] = {}
    for clock in deleted:
        held = by_clock.get(stripped(clock))
        if held is None or len(clock) > len(held):
            by_clock[stripped(clock)] = clock
    unique = list(by_clock.values())
    needed = [
        d
        for d in unique
        if not any(compare(e, d) is Order.AFTER for e in unique)
        and not any(_at_or_after(s.clock, d) for s in siblings)
    ]
    needed.sort(key=stripped, reverse=True)
    return tuple(needed)


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
