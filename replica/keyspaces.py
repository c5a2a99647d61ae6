"""The node's state: one keyspace per data type of the registry, and the hybrid clock.

`mv_*` and `kv_*` name different keys even when the key string is the same, so
each type's keys are a dictionary of their own (`states[type name]`).  This
class replaces and merges states, keeps the hybrid logical clock above every
timestamp the node has seen, and tells listeners which keys changed: that
single notification is what replication and durable storage hook into, so the
handlers never need to know either exists.  What an operation does to a state
is the data type's (`replica.crdt`) and its handlers' (`replica.node.handlers`);
nothing here knows one type from another beyond its `DataType`.

No timestamp from outside can carry the clock far into the future: a client's
timestamp beyond `HybridLogicalClock.bound` (the wall clock plus
`max_clock_skew_ms`) is refused with `TooFarAhead` before anything changes,
and a peer's or a stored one beyond it is kept in its key but not observed.
The `horizon`, below which states may forget history, trails only what the
clock itself issued.

Sibling counts are kept as a histogram per type with siblings, moved wherever
a key's state is replaced, so `max_siblings` never scans the keys; every move
and every merge is shown to the `SiblingWatch` of the node's `Limits`.  The
keys holding a tombstone are counted per type with deletes the same way, and a
change to one of them is also told to `tombstone_listeners`: tombstone
collection listens there, so it costs an ordinary write nothing.  `remove`
drops a key whose tombstone every node holds (`replica.replication.tombstones`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from replica.crdt.hlc import LOGICAL_BITS, HybridLogicalClock
from replica.crdt.registry import BY_NAME, TYPES, DataType
from replica.limits import Limits, SiblingWatch

ChangeListener = Callable[[str, str, bool], None]
"""Called with (type name, key, local) after a key's state changed.

`local` is True for a client's write here and False for a merge from a peer.
Replication pushes only local changes: every write reaches every peer from
the node that took it, so forwarding merged states would only echo them
around the cluster; anti-entropy repairs what an origin failed to deliver.
"""

DEFAULT_MAX_CLOCK_SKEW_MS = 60_000
REMEMBERED_REMOVALS = 65_536
"""Dropped tombstones remembered, so a late copy of one is not taken back in."""
DEFAULT_MVCC_RETENTION_MS = 3_600_000


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class TooFarAhead(Exception):
    """A client's timestamp above what the clock accepts now; nothing was changed."""

    def __init__(self, timestamp: int, bound: int) -> None:
        super().__init__(f"timestamp {timestamp} is above {bound}")
        self.timestamp = timestamp
        self.bound = bound


class Keyspaces:
    """All keys a node holds, by data type, and the clock their timestamps come from."""

    def __init__(
        self,
        node_id: str,
        *,
        mvcc_retention_ms: int = DEFAULT_MVCC_RETENTION_MS,
        actor: str | None = None,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
        now_ms: Callable[[], int] = wall_clock_ms,
        limits: Limits | None = None,
    ) -> None:
        self.node_id = node_id
        self.actor = actor or node_id
        self.dot_floor = 0
        """No MV write here issues `actor` a counter at or below it, for any key.

        A key whose history was collected no longer shows which of the actor's
        counters it used, and a client may still hold them in a context.
        """
        self.states: dict[str, dict[str, Any]] = {t.name: {} for t in TYPES}
        """Type name -> key -> state; the dictionaries are never replaced."""
        self.hlc = HybridLogicalClock()
        self._now_ms = now_ms
        self.max_clock_skew_ms = max_clock_skew_ms
        self._retention = mvcc_retention_ms << LOGICAL_BITS
        self._gc_before = 0
        self.listeners: list[ChangeListener] = []
        self.tombstone_listeners: list[ChangeListener] = []
        """Told, after `listeners`, of a change to a key that held or holds a tombstone."""
        self._sizes: dict[str, dict[int, int]] = {t.name: {} for t in TYPES if t.has_siblings}
        """Per type with siblings: sibling count -> how many keys have that many."""
        self.limits = limits or Limits()
        self.sibling_watch = SiblingWatch(self.limits)
        self._tombstones: dict[str, int] = {
            t.name: 0 for t in TYPES if t.holds_tombstone is not None
        }
        """Per type with deletes: how many keys hold a tombstone."""
        self.collected: dict[str, int] = dict.fromkeys(self._tombstones, 0)
        """Per type with deletes: tombstone-only keys dropped since the node started."""
        self._removed: dict[tuple[str, str], Any] = {}
        """(type name, key) -> the tombstone a recent `remove` dropped, oldest first."""

    # -- reading and replacing states ----------------------------------------------------

    def get(self, data_type: DataType, key: str) -> Any:
        """The key's state, or None for an absent key."""
        return self.states[data_type.name].get(key)

    def put(self, data_type: DataType, key: str, state: Any, *, local: bool = True) -> None:
        """Replace the key's state and tell the listeners (`local`: a client's change here)."""
        name = data_type.name
        store = self.states[name]
        current = store.get(key)
        count = data_type.count_siblings
        if count is not None:
            old = 0 if current is None else count(current)
            if old != (new := count(state)):
                _resize(self._sizes[name], old, new)
                self.sibling_watch.resized(name, key, old, new)
        touched = False
        if (tombstone := data_type.holds_tombstone) is not None:
            had = current is not None and tombstone(current)
            holds = tombstone(state)
            if had != holds:
                self._tombstones[name] += -1 if had else 1
            touched = had or holds
        store[key] = state
        for listener in self.listeners:
            listener(name, key, local)
        if touched:
            for listener in self.tombstone_listeners:
                listener(name, key, local)

    def merge(self, data_type: DataType, key: str, incoming: Any) -> None:
        """Merge a peer's state of a key into ours; listeners hear of it only if it changed."""
        self._observe_state(data_type, incoming)
        current = self.states[data_type.name].get(key)
        if current is None and self._removed and self._removed_holds(data_type, key, incoming):
            return
        merged = incoming if current is None else current.merge(incoming)
        if data_type.collect is not None:
            merged, _ = data_type.collect(merged, self.horizon)
        if merged != current and not data_type.is_empty(merged):
            self.put(data_type, key, merged, local=False)
            if data_type.count_siblings is not None:
                self.sibling_watch.merged(data_type.name, key, data_type.count_siblings(merged))

    # -- tombstone collection ----------------------------------------------------------------

    def remove(self, data_type: DataType, key: str) -> Any:
        """Drop a key; returns the state it held (None for an absent key).

        Only for a key that holds nothing but a tombstone every node holds
        (`replica.replication.tombstones` decides).  Listeners hear of it as of
        a merge (`local` False): storage writes the key as gone, and nothing is
        pushed to peers.  The node's own counters stay above the key's
        (`dot_floor`), so a later write never reissues one of its dots, and the
        state is remembered for a while, so a late copy of the same tombstone
        from a peer is not taken back in.
        """
        name = data_type.name
        state = self.states[name].pop(key, None)
        if state is None:
            return None
        if data_type.count_siblings is not None:
            old = data_type.count_siblings(state)
            _resize(self._sizes[name], old, 0)
            self.sibling_watch.resized(name, key, old, 0)
        if data_type.holds_tombstone is not None and data_type.holds_tombstone(state):
            self._tombstones[name] -= 1
        if data_type.issued_by is not None:
            self.dot_floor = max(self.dot_floor, data_type.issued_by(state, self.actor))
        self.collected[name] = self.collected.get(name, 0) + 1
        removed = self._removed
        removed.pop((name, key), None)
        removed[(name, key)] = state
        if len(removed) > REMEMBERED_REMOVALS:
            del removed[next(iter(removed))]
        for listener in [*self.listeners, *self.tombstone_listeners]:
            listener(name, key, False)
        return state

    def removed(self, name: str, key: str) -> bool:
        """Whether the node dropped the key's tombstone recently and holds nothing of it since."""
        return (name, key) in self._removed and key not in self.states[name]

    def _removed_holds(self, data_type: DataType, key: str, incoming: Any) -> bool:
        """Whether a tombstone dropped here already holds all of `incoming` (as this node's
        horizon would leave it): a late copy."""
        gone = self._removed.get((data_type.name, key))
        if gone is None:
            return False
        merged = gone.merge(incoming)
        if data_type.collect is not None:
            merged, _ = data_type.collect(merged, self.horizon)
        return bool(merged == gone)

    # -- the hybrid clock -------------------------------------------------------------------

    def timestamp(self, given: int | None) -> int:
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

    def observe(self, timestamp: int) -> None:
        """Observe a peer's or a stored timestamp, unless it is past the clock's bound."""
        hlc = self.hlc
        if timestamp > hlc.last and timestamp <= hlc.bound(self._now_ms(), self.max_clock_skew_ms):
            self.hlc = hlc.observe(timestamp)

    def _observe_state(self, data_type: DataType, state: Any) -> None:
        """Observe the newest timestamp a peer's or a stored state carries, if any."""
        if data_type.newest_timestamp is not None:
            newest = data_type.newest_timestamp(state)
            if newest is not None:
                self.observe(newest)

    @property
    def horizon(self) -> int:
        """States may forget history below this timestamp (MVCC's garbage collection).

        The automatic part trails the newest timestamp the node's clock issued
        by the retention: neither a client's nor a peer's timestamp moves it,
        so clients that bring their own timestamps keep their history, and a
        timestamp from the future destroys none.
        """
        automatic = self.hlc.issued - self._retention if self._retention else 0
        return max(self._gc_before, automatic, 0)

    def collect_garbage(self, before: int = 0) -> int:
        """Raise the horizon to at least `before` and collect; returns how much was dropped."""
        self._gc_before = max(self._gc_before, before)
        horizon = self.horizon
        removed = 0
        for data_type in TYPES:
            if data_type.collect is None:
                continue
            for key, state in list(self.states[data_type.name].items()):
                collected, count = data_type.collect(state, horizon)
                if count:
                    self.put(data_type, key, collected)
                    removed += count
        return removed

    # -- siblings ----------------------------------------------------------------------------

    def max_siblings(self, name: str) -> int:
        """The largest sibling count of any key of type `name`; 0 when it has none."""
        return max(self._sizes[name], default=0)

    def tombstones(self) -> dict[str, int]:
        """Per type with deletes: how many keys hold a tombstone."""
        return dict(self._tombstones)

    def sibling_histogram(self, name: str) -> dict[int, int]:
        """Sibling count -> how many keys of type `name` have that many (counts of 0 omitted)."""
        return dict(self._sizes[name])

    # -- recovery ------------------------------------------------------------------------------

    def load(self, name: str, key: str, state: Any) -> None:
        """Put a state read back from durable storage.

        Listeners hear of it as of a merge (`local` False): replication indexes
        the key for anti-entropy without pushing it to peers again.
        """
        data_type = BY_NAME[name]
        self._observe_state(data_type, state)
        self.put(data_type, key, state, local=False)

    def load_many(self, states: Iterable[tuple[str, str, Any]]) -> int:
        """`load` every (type name, key, state) of a recovery; returns how many.

        The sibling histograms are counted once at the end rather than moved
        key by key: recovery loads every key once.
        """
        stores = self.states
        clocked = {t.name: t.newest_timestamp for t in TYPES if t.newest_timestamp is not None}
        listeners, observe = self.listeners, self.observe
        count = 0
        for name, key, state in states:
            newest_of = clocked.get(name)
            if newest_of is not None and (newest := newest_of(state)) is not None:
                observe(newest)
            stores[name][key] = state
            for listener in listeners:
                listener(name, key, False)
            count += 1
        for name in self._sizes:
            size = BY_NAME[name].size
            counts = Counter(map(size, stores[name].values()))
            self._sizes[name] = {n: keys for n, keys in counts.items() if n}
        for data_type in TYPES:
            if (tombstone := data_type.holds_tombstone) is not None:
                name = data_type.name
                marked = [key for key, state in stores[name].items() if tombstone(state)]
                self._tombstones[name] = len(marked)
                for key in marked:
                    for listener in self.tombstone_listeners:
                        listener(name, key, False)
        return count


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
