"""The node's state: four separate keyspaces over the pure data types.

`mv_*`, `kv_*`, `mvcc_*` and `lww_*` name four different keys even when the key
string is the same, so each keyspace is its own dictionary.  This class applies
operations and merges to them, keeps the hybrid logical clock above every
timestamp the node has seen, and tells listeners which keys changed: that
single notification is what replication and durable storage hook into, so the
handlers never need to know either exists.

No timestamp from outside can carry the clock far into the future: a client's
timestamp beyond `HybridLogicalClock.bound` (the wall clock plus
`max_clock_skew_ms`) is refused with `TooFarAhead` before anything changes,
and a peer's or a stored one beyond it is kept in its key but not observed.
The automatic MVCC horizon trails only what the clock itself issued.

Sibling counts are kept as a histogram per keyspace, moved wherever a key's
state is replaced, so `max_siblings` never scans the keys.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from replica.crdt.clocked_siblings import Clock, ClockedSiblings, PutResult
from replica.crdt.hlc import HybridLogicalClock
from replica.crdt.lww import LWWRegister
from replica.crdt.mv_register import MVRegister, Sibling
from replica.crdt.mvcc import Version, VersionChain
from replica.crdt.version_vector import VersionVector

ChangeListener = Callable[[str, str, bool], None]
"""Called with (keyspace, key, local) after a key's state changed.

`local` is True for a client's write here and False for a merge from a peer.
Replication pushes only local changes: every write reaches every peer from
the node that took it, so forwarding merged states would only echo them
around the cluster; anti-entropy repairs what an origin failed to deliver.
"""

MV, KV, MVCC, LWW = "mv", "kv", "mvcc", "lww"

HLC_SHIFT = 16  # the hybrid logical clock keeps 16 bits of logical counter under the milliseconds
DEFAULT_MAX_CLOCK_SKEW_MS = 60_000


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class TooFarAhead(Exception):
    """A client's timestamp above what the clock accepts now; nothing was changed."""

    def __init__(self, timestamp: int, bound: int) -> None:
        super().__init__(f"timestamp {timestamp} is above {bound}")
        self.timestamp = timestamp
        self.bound = bound


class Keyspaces:
    """All keys a node holds, and the operations that change them."""

    def __init__(
        self,
        node_id: str,
        *,
        mvcc_retention_ms: int,
        actor: str | None = None,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
        now_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.node_id = node_id
        self.actor = actor or node_id
        self.mv: dict[str, MVRegister] = {}
        self.kv: dict[str, ClockedSiblings] = {}
        self.mvcc: dict[str, VersionChain] = {}
        self.lww: dict[str, LWWRegister] = {}
        self.hlc = HybridLogicalClock()
        self._now_ms = now_ms
        self.max_clock_skew_ms = max_clock_skew_ms
        self._retention = mvcc_retention_ms << HLC_SHIFT
        self._gc_before = 0
        self.listeners: list[ChangeListener] = []
        self._sizes: dict[str, dict[int, int]] = {MV: {}, KV: {}}
        """Per keyspace with siblings: sibling count -> how many keys have that many."""

    def _changed(self, keyspace: str, key: str, local: bool = True) -> None:
        for listener in self.listeners:
            listener(keyspace, key, local)

    def _timestamp(self, given: int | None) -> int:
        """A client's timestamp is observed; without one the clock issues a fresh one.

        Raises `TooFarAhead`, changing nothing, for a timestamp past the clock's bound.
        """
        if given is not None:
            hlc = self.hlc
            if given > hlc.last:
                bound = hlc.bound(self._now_ms(), self.max_clock_skew_ms)
                if given > bound:
                    raise TooFarAhead(given, bound)
                self.hlc = hlc.observe(given)
            return given
        self.hlc, issued = self.hlc.tick(self._now_ms())
        return issued

    def _observe(self, timestamp: int) -> None:
        """Observe a peer's or a stored timestamp, unless it is past the clock's bound."""
        hlc = self.hlc
        if timestamp > hlc.last and timestamp <= hlc.bound(self._now_ms(), self.max_clock_skew_ms):
            self.hlc = hlc.observe(timestamp)

    def max_siblings(self, keyspace: str) -> int:
        """The largest sibling count of any key of `keyspace` (MV or KV); 0 when it has none."""
        return max(self._sizes[keyspace], default=0)

    def sibling_histogram(self, keyspace: str) -> dict[int, int]:
        """Sibling count -> how many keys of `keyspace` have that many (counts of 0 omitted)."""
        return dict(self._sizes[keyspace])

    # -- MV registers --------------------------------------------------------------

    def mv_write(
        self, key: str, value: Any, context: VersionVector | None
    ) -> tuple[MVRegister, Sibling]:
        current = self.mv.get(key, _EMPTY_MV)
        register, sibling = current.write(self.actor, value, context)
        self.mv[key] = register
        if len(register) != len(current):
            _resize(self._sizes[MV], len(current), len(register))
        self._changed(MV, key)
        return register, sibling

    def mv_merge(self, key: str, incoming: MVRegister) -> None:
        current = self.mv.get(key)
        merged = incoming if current is None else current.merge(incoming)
        if merged.siblings:
            self._absorb(MV, self.mv, key, merged)

    # -- client-clocked KV ---------------------------------------------------------

    def kv_put(self, key: str, value: Any, clock: Clock) -> PutResult:
        current = self.kv.get(key, _EMPTY_KV)
        updated, result = current.put(value, clock)
        if updated != current:
            self.kv[key] = updated
            _resize(self._sizes[KV], len(current.siblings), len(updated.siblings))
            self._changed(KV, key)
        return result

    def kv_resolve(self, key: str, value: Any, clock: Clock) -> None:
        """Raises `NotCovered` and changes nothing when the clock misses a sibling."""
        current = self.kv.get(key, _EMPTY_KV)
        self.kv[key] = current.resolve(value, clock)
        _resize(self._sizes[KV], len(current.siblings), 1)
        self._changed(KV, key)

    def kv_merge(self, key: str, incoming: ClockedSiblings) -> None:
        current = self.kv.get(key)
        merged = incoming if current is None else current.merge(incoming)
        if merged.siblings:
            self._absorb(KV, self.kv, key, merged)

    # -- MVCC ------------------------------------------------------------------------

    @property
    def mvcc_horizon(self) -> int:
        """Reads below this timestamp may have lost versions to garbage collection.

        The automatic part trails the newest timestamp the node's clock issued
        by the retention: neither a client's nor a peer's timestamp moves it,
        so clients that bring their own timestamps (as seed 003 does) keep
        their history, and a timestamp from the future destroys none.
        """
        automatic = self.hlc.issued - self._retention if self._retention else 0
        return max(self._gc_before, automatic, 0)

    def mvcc_put(self, key: str, value: Any, timestamp: int | None) -> tuple[int, int]:
        """Returns (version, timestamp); raises `TimestampConflict` and changes nothing."""
        current = self.mvcc.get(key, _EMPTY_CHAIN)
        ts = self._timestamp(timestamp)
        chain, version = current.put(ts, value, self.node_id)
        if chain is not current:
            # collection only drops versions older than this one: its number stands
            self.mvcc[key], _ = chain.collect(self.mvcc_horizon)
            self._changed(MVCC, key)
        return version, ts

    def mvcc_read(self, key: str, read_timestamp: int | None) -> tuple[Version, int] | None:
        chain = self.mvcc.get(key)
        return None if chain is None else chain.read(read_timestamp)

    def mvcc_gc(self, before: int) -> int:
        """Advance the horizon to at least `before`; returns how many versions were dropped."""
        self._gc_before = max(self._gc_before, before)
        return self.collect_garbage()

    def collect_garbage(self) -> int:
        horizon = self.mvcc_horizon
        removed = 0
        for key, chain in list(self.mvcc.items()):
            collected, count = chain.collect(horizon)
            if count:
                self.mvcc[key] = collected
                removed += count
                self._changed(MVCC, key)
        return removed

    def mvcc_merge(self, key: str, incoming: VersionChain) -> None:
        newest = incoming.newest()
        if newest is not None:
            self._observe(newest.timestamp)
        current = self.mvcc.get(key)
        merged = incoming if current is None else current.merge(incoming)
        merged, _ = merged.collect(self.mvcc_horizon)
        if merged.versions:
            self._absorb(MVCC, self.mvcc, key, merged)

    # -- LWW registers --------------------------------------------------------------

    def lww_write(self, key: str, value: Any, timestamp: int | None) -> int:
        ts = self._timestamp(timestamp)
        written = LWWRegister(value, ts, self.node_id)
        current = self.lww.get(key)
        merged = written if current is None else current.merge(written)
        if merged != current:
            self.lww[key] = merged
            self._changed(LWW, key)
        return ts

    def lww_merge(self, key: str, incoming: LWWRegister) -> None:
        self._observe(incoming.timestamp)
        current = self.lww.get(key)
        merged = incoming if current is None else current.merge(incoming)
        self._absorb(LWW, self.lww, key, merged)

    # -- recovery -------------------------------------------------------------------------

    def load(self, keyspace: str, key: str, state: Any) -> None:
        """Put a state read back from durable storage.

        Listeners hear of it as of a merge (`local` False): replication indexes
        the key for anti-entropy without pushing it to peers again.
        """
        if isinstance(state, LWWRegister):
            self._observe(state.timestamp)
        elif isinstance(state, VersionChain) and (newest := state.newest()) is not None:
            self._observe(newest.timestamp)
        store = getattr(self, keyspace)
        sizes = self._sizes.get(keyspace)
        if sizes is not None:
            _resize(sizes, _size(store.get(key)), _size(state))
        store[key] = state
        self._changed(keyspace, key, local=False)

    def load_many(self, states: Iterable[tuple[str, str, Any]]) -> int:
        """`load` every (keyspace, key, state) of a recovery; returns how many.

        The sibling histograms are counted once at the end rather than moved
        key by key: recovery loads every key once, and a million moves cost
        more than one count.
        """
        stores: dict[str, dict[str, Any]] = {
            MV: self.mv,
            KV: self.kv,
            MVCC: self.mvcc,
            LWW: self.lww,
        }
        changed, observe = self._changed, self._observe
        count = 0
        for keyspace, key, state in states:
            if keyspace == LWW:
                observe(state.timestamp)
            elif keyspace == MVCC and (newest := state.newest()) is not None:
                observe(newest.timestamp)
            stores[keyspace][key] = state
            changed(keyspace, key, False)
            count += 1
        for keyspace, sizes in (
            (MV, map(len, self.mv.values())),
            (KV, map(_size, self.kv.values())),
        ):
            self._sizes[keyspace] = {n: keys for n, keys in Counter(sizes).items() if n}
        return count

    # -- merges from peers ----------------------------------------------------------

    def _absorb(self, keyspace: str, store: dict[str, Any], key: str, merged: Any) -> None:
        current = store.get(key)
        if merged != current:
            store[key] = merged
            sizes = self._sizes.get(keyspace)
            if sizes is not None:
                _resize(sizes, _size(current), _size(merged))
            self._changed(keyspace, key, local=False)


def _size(state: MVRegister | ClockedSiblings | None) -> int:
    return 0 if state is None else len(state.siblings)


def _resize(sizes: dict[int, int], old: int, new: int) -> None:
    """Move one key from sibling count `old` to `new` (0: no key) in a histogram."""
    if old == new:
        return
    if old:
        left = sizes[old] - 1
        if left:
            sizes[old] = left
        else:
            del sizes[old]
    if new:
        sizes[new] = sizes.get(new, 0) + 1


_EMPTY_MV = MVRegister()
_EMPTY_KV = ClockedSiblings()
_EMPTY_CHAIN = VersionChain()
