"""Multi-version chains: every value a key had, by timestamp, down to a GC horizon.

Source: PROTOCOL.md (`mvcc_put`, `mvcc_get`, `mvcc_snapshot`, `mvcc_gc`): each write
makes a new version tagged with its commit timestamp, and a read at timestamp
`t` sees the newest version at or before `t`, so readers get a consistent
snapshot without blocking writers.  Garbage collection follows the usual MVCC
rule (as in PostgreSQL's vacuum or TiKV's GC safe point): a version no read at
or above the horizon can see is dropped, so each key keeps its newest version
at or below the horizon.

Invariants of a `VersionChain`:

- `versions` are in strictly ascending timestamp order (one version per
  timestamp) and every one of them is above `floor`;
- `floor` is the timestamp of the newest version collection removed, or -1
  when none was; `dropped` counts the removed versions, so a version's number
  (`dropped + index + 1`) does not change when older versions are collected;
  `floor == -1` exactly when `dropped == 0`;
- collection never empties a chain, so a chain with `floor >= 0` holds at
  least one version.

A delete is a tombstone version (`deleted`, value null): a read at or after
its timestamp finds no value, a read before it still finds the older ones,
and collection treats it like any version.

Merging is a join-semilattice: the greater `(floor, dropped)` wins, versions
are the union above the merged floor, and when both sides hold different
versions at one timestamp the one with the higher origin node id wins, then
the larger canonical value, so every replica picks the same winner.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from replica.crdt.canonical import CanonicalValue, canonical
from replica.crdt.malformed import (
    MAX_INT,
    Malformed,
    require_count,
    require_field,
    require_list,
    require_object,
)


@dataclass(frozen=True, slots=True)
class Version(CanonicalValue):
    """One committed value, or a tombstone.  Equality compares the value's canonical encoding."""

    timestamp: int
    value: Any = field(compare=False)
    origin: str
    _canonical: bytes = field(init=False, repr=False)
    deleted: bool = False
    """A tombstone: reads at or after it find no value."""

    def rank(self) -> tuple[str, bool, bytes]:
        """Tie-break between two versions at one timestamp: the same on every replica."""
        return self.origin, self.deleted, self._canonical

    def to_wire(self) -> list[Any]:
        """`[timestamp, value, origin]`, and `true` after them for a tombstone."""
        if self.deleted:
            return [self.timestamp, None, self.origin, True]
        return [self.timestamp, self.value, self.origin]


class TimestampConflict(Exception):
    """A put at or below the newest timestamp that is not a retry of that version."""

    def __init__(self, newest: int) -> None:
        super().__init__(f"timestamp is at or below the newest version's ({newest})")
        self.newest = newest


@dataclass(frozen=True, slots=True)
class VersionChain:
    """One key's versions, oldest first."""

    versions: tuple[Version, ...] = ()
    floor: int = -1
    dropped: int = 0

    def put(
        self, timestamp: int, value: Any, origin: str, *, deleted: bool = False
    ) -> tuple[VersionChain, int]:
        """Append a version (a tombstone when `deleted`) above every existing one.

        Returns the chain and the version's number.  Timestamps only move
        forward so a snapshot read can never change under a reader.  Re-sending
        the exact (timestamp, value) of an existing version, or a tombstone's
        timestamp, is a retry and answers that version's number, whatever node
        made it.
        """
        if deleted:
            value = None
        top = self.versions[-1].timestamp if self.versions else self.floor
        if timestamp > top:
            new = Version(timestamp, value, origin, deleted=deleted)
            return VersionChain((*self.versions, new), *self._gc), self.number(len(self.versions))
        index = self._index_of(timestamp)
        if index is not None:
            held = self.versions[index]
            if held.deleted == deleted and held._canonical == canonical(value):
                return self, self.number(index)
        raise TimestampConflict(top)

    def read(self, read_timestamp: int | None) -> tuple[Version, int] | None:
        """The newest version at or before `read_timestamp` (newest overall when None)."""
        if read_timestamp is None:
            index = len(self.versions) - 1
        else:
            index = bisect_right(self.versions, read_timestamp, key=_timestamp) - 1
        if index < 0:
            return None
        return self.versions[index], self.number(index)

    def number(self, index: int) -> int:
        """The version number of `versions[index]`: 1, 2, ... in timestamp order."""
        return self.dropped + index + 1

    def newest(self) -> Version | None:
        return self.versions[-1] if self.versions else None

    def collect(self, horizon: int) -> tuple[VersionChain, int]:
        """Drop versions no read at or above `horizon` can see; returns how many went.

        The newest version at or below the horizon stays: a read exactly at the
        horizon must still find it.
        """
        keep_from = bisect_right(self.versions, horizon, key=_timestamp) - 1
        if keep_from <= 0:
            return self, 0
        collected = VersionChain(
            self.versions[keep_from:],
            floor=self.versions[keep_from - 1].timestamp,
            dropped=self.dropped + keep_from,
        )
        return collected, keep_from

    def merge(self, other: VersionChain) -> VersionChain:
        """Join two replicas' chains: commutative, associative and idempotent."""
        if self == other:
            return self
        floor, dropped = max(self._gc, other._gc)
        return VersionChain(_resolve(chain(self.versions, other.versions), floor), floor, dropped)

    def to_wire(self) -> dict[str, Any]:
        return {
            "versions": [v.to_wire() for v in self.versions],
            "floor": self.floor,
            "dropped": self.dropped,
        }

    def to_stored(self) -> dict[str, Any]:
        """The form this node's own store keeps: the wire form."""
        return self.to_wire()

    @staticmethod
    def from_wire(raw: Any) -> VersionChain:
        """Validate `{versions, floor, dropped}`; order and duplicate timestamps are normalised."""
        obj = require_object(raw, "an MVCC chain")
        items = require_list(require_field(obj, "versions"), "field 'versions'")
        floor = require_field(obj, "floor")
        if type(floor) is not int or not -1 <= floor <= MAX_INT:
            raise Malformed(f"field 'floor' must be an integer from -1 to {MAX_INT}")
        dropped = require_count(require_field(obj, "dropped"), "field 'dropped'")
        if (floor == -1) != (dropped == 0):
            raise Malformed("fields 'floor' and 'dropped' must be -1 and 0 together")
        versions = [_version_from_wire(item, i) for i, item in enumerate(items)]
        if any(v.timestamp <= floor for v in versions):
            raise Malformed(f"every version's timestamp must be above the floor {floor}")
        if floor >= 0 and not versions:
            raise Malformed("a chain that lost versions to collection keeps at least one")
        return VersionChain(_resolve(versions, floor), floor, dropped)

    @staticmethod
    def from_stored(raw: Any) -> VersionChain:
        """A chain as `to_wire` wrote it to this node's own store, read back as is.

        The stored chain was already resolved and in timestamp order, so only
        shape and types are checked; a record of another shape raises
        `TypeError`, `ValueError` or `KeyError`.  State from a peer must go
        through `from_wire`.
        """
        items = raw["versions"]
        floor = raw["floor"]
        dropped = raw["dropped"]
        if type(items) is not list or type(floor) is not int or type(dropped) is not int:
            raise TypeError("an MVCC chain must have versions, floor and dropped")
        return VersionChain(tuple([_stored_version(item) for item in items]), floor, dropped)

    @property
    def _gc(self) -> tuple[int, int]:
        return self.floor, self.dropped

    def _index_of(self, timestamp: int) -> int | None:
        index = bisect_left(self.versions, timestamp, key=_timestamp)
        if index < len(self.versions) and self.versions[index].timestamp == timestamp:
            return index
        return None


def _timestamp(version: Version) -> int:
    return version.timestamp


def _resolve(versions: Iterable[Version], floor: int) -> tuple[Version, ...]:
    """One winner per timestamp above `floor`, in timestamp order."""
    winners: dict[int, Version] = {}
    for v in versions:
        if v.timestamp <= floor:
            continue
        held = winners.get(v.timestamp)
        if held is None or v.rank() > held.rank():
            winners[v.timestamp] = v
    return tuple(winners[ts] for ts in sorted(winners))


def _version_from_wire(raw: Any, i: int) -> Version:
    if not (isinstance(raw, list) and (len(raw) == 3 or (len(raw) == 4 and raw[3] is True))):
        raise Malformed(f"version {i} must be [timestamp, value, origin] or [.., true]")
    timestamp = require_count(raw[0], f"version {i}'s timestamp")
    if not isinstance(raw[2], str):
        raise Malformed(f"version {i}'s origin must be a node id string")
    if len(raw) == 4:
        return Version(timestamp, None, raw[2], deleted=True)
    return Version(timestamp, raw[1], raw[2])


def _stored_version(item: list[Any]) -> Version:
    if type(item) is not list:
        raise TypeError("an MVCC version must be [timestamp, value, origin]")
    timestamp, value, origin, *deleted = item
    if type(timestamp) is not int or type(origin) is not str or deleted not in ([], [True]):
        raise TypeError("an MVCC version must be [timestamp, value, origin] or [.., true]")
    return Version(timestamp, value, origin, deleted=bool(deleted))
