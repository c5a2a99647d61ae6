"""Hybrid logical clock, packed in one integer.

Source: Kulkarni et al., "Logical Physical Clocks and Consistent Snapshots in
Globally Distributed Databases" (2014).  An HLC timestamp is a pair (l, c):
`l` the greatest physical time seen, `c` a logical counter that orders events
within one millisecond of `l`.  Packing the pair as `l << 16 | c` keeps it one
integer: the pairs' lexicographic order is integer order, so server-issued
timestamps share one domain with the plain integers clients bring to
`mvcc_put` and `lww_write`, and the node can observe either.

Invariants:

- every timestamp `tick` issues is strictly greater than every timestamp the
  clock issued or observed before (`last` is the greatest of them);
- an issued timestamp is never below the current physical time `now_ms << 16`,
  so timestamps track the wall clock while it is ahead of what was seen;
- when more than 2**16 events share a millisecond the counter carries into
  the physical bits: order is still kept, only `physical_ms` runs ahead;
- `issued` is the greatest timestamp `tick` issued: what the node's own clock
  has reached, whatever clients or peers claimed.

The clock never reads the wall clock itself: the caller passes the time in,
which keeps it pure and lets tests drive it.
"""

from __future__ import annotations

from dataclasses import dataclass

from replica.crdt.malformed import MAX_INT

LOGICAL_BITS = 16
TICK_HEADROOM = 1 << 40
"""Ticks always left above the highest bound, so `tick` cannot overflow in practice."""


def physical_ms(ts: int) -> int:
    """The millisecond part of a timestamp, for logs and GC horizons."""
    return ts >> LOGICAL_BITS


@dataclass(frozen=True, slots=True)
class HybridLogicalClock:
    """The greatest timestamp this node has issued or observed, and the greatest it issued."""

    last: int = 0
    issued: int = 0

    def tick(self, now_ms: int) -> tuple[HybridLogicalClock, int]:
        """Issue a fresh timestamp for a local event at wall time `now_ms`.

        Raises OverflowError rather than issue a timestamp that no longer fits
        a signed 64-bit word: wrapping would break the order silently.
        """
        ts = max(self.last + 1, now_ms << LOGICAL_BITS)
        if ts > MAX_INT:
            raise OverflowError(f"hybrid logical clock passed {MAX_INT}")
        return HybridLogicalClock(ts, ts), ts

    def observe(self, timestamp: int) -> HybridLogicalClock:
        """Take in a timestamp from a client or peer, so later ticks exceed it."""
        return self if timestamp <= self.last else HybridLogicalClock(timestamp, self.issued)

    def bound(self, now_ms: int, skew_ms: int) -> int:
        """The greatest timestamp to accept from outside at wall time `now_ms`.

        Everything the clock has seen stays acceptable (a timestamp read back
        from this node), and beyond that at most `skew_ms` past the wall clock.
        The bound follows the wall clock, not `last`: were it `last` plus the
        skew, each accepted timestamp would let the next one reach further.
        However large the skew, it stays `TICK_HEADROOM` below `MAX_INT`.
        """
        return max(self.last, min((now_ms + skew_ms) << LOGICAL_BITS, MAX_INT - TICK_HEADROOM))
