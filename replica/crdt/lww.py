"""Last-writer-wins register: one value, the one with the greatest timestamp.

Source: PROTOCOL.md (`lww_write`, `lww_read`; actor-ts's LWWRegister, with
state `{value, timestamp, replicaId}`) and Jylis's TREG (timestamped register);
Shapiro et al., "A comprehensive study of Convergent and Commutative
Replicated Data Types" (2011), the LWW-Register.

Concurrent writes do not surface: the write with the greater
`(timestamp, replica)` wins and the other is silently gone.  That pair is a
total order only if a replica never issues one timestamp twice, which a node's
hybrid logical clock guarantees but a client that brings its own timestamp
does not.  So an exact tie on both is broken by the canonical encoding of the
value: every replica picks the same winner and merge stays a semilattice (a
max over a total order).

A delete is a write of a tombstone (`deleted`, value null): it ranks above
every write at its own `(timestamp, replica)` and below any later one, so a
read after it finds no value until a write above it.

Invariant: equality compares the value's canonical encoding, so two registers
are `==` exactly when they are the same write, and a merge that changes the
winner never looks like no change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from replica.crdt.canonical import CanonicalValue
from replica.crdt.malformed import (
    Malformed,
    require_count,
    require_field,
    require_object,
    require_str,
)


@dataclass(frozen=True, slots=True)
class LWWRegister(CanonicalValue):
    """A value with the timestamp and replica of the write that set it, or a tombstone."""

    value: Any = field(compare=False)
    timestamp: int
    replica: str
    _canonical: bytes = field(init=False, repr=False)
    deleted: bool = False
    """A tombstone: the key reads as absent."""

    @staticmethod
    def tombstone(timestamp: int, replica: str) -> LWWRegister:
        return LWWRegister(None, timestamp, replica, deleted=True)

    def merge(self, other: LWWRegister) -> LWWRegister:
        """The write with the greater (timestamp, replica, tombstone first, canonical value)."""
        return self if self._rank() >= other._rank() else other

    def to_wire(self) -> dict[str, Any]:
        """`{value, timestamp, replica}`, with `deleted: true` for a tombstone."""
        wire = {"value": self.value, "timestamp": self.timestamp, "replica": self.replica}
        if self.deleted:
            wire["deleted"] = True
        return wire

    def to_stored(self) -> dict[str, Any]:
        """The form this node's own store keeps: the wire form."""
        return self.to_wire()

    @staticmethod
    def from_wire(raw: Any) -> LWWRegister:
        obj = require_object(raw, "an LWW register")
        try:
            value = require_field(obj, "value")
            timestamp = require_count(require_field(obj, "timestamp"), "field 'timestamp'")
            replica = require_str(obj, "replica")
            deleted = obj.get("deleted", False)
            if type(deleted) is not bool:
                raise Malformed("field 'deleted' must be a boolean")
        except Malformed as exc:
            raise Malformed(f"LWW register: {exc}") from None
        if deleted:
            return LWWRegister.tombstone(timestamp, replica)
        return LWWRegister(value, timestamp, replica)

    @staticmethod
    def from_stored(raw: Any) -> LWWRegister:
        """A register as `to_wire` wrote it to this node's own store: types checked only.

        A record of another shape raises `TypeError` or `KeyError`.  State from
        a peer must go through `from_wire`.
        """
        timestamp = raw["timestamp"]
        replica = raw["replica"]
        if type(timestamp) is not int or type(replica) is not str:
            raise TypeError("an LWW register must have an integer timestamp and a replica")
        if raw.get("deleted") is True:
            return LWWRegister.tombstone(timestamp, replica)
        return LWWRegister(raw["value"], timestamp, replica)

    def _rank(self) -> tuple[int, str, bool, bytes]:
        return self.timestamp, self.replica, self.deleted, self._canonical
