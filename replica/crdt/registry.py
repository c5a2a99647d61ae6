"""The registry of data types: each type named once, with everything the shell needs of it.

A node holds one keyspace per type: `mv_*` and `kv_*` messages name different
keys even when the key string is the same.  Everything generic about a type
(its keyspace and message prefix, its record tag, its merge message, how its
state travels and is stored, what `status` counts of it) is read from its
`DataType` here, so replication, durable storage, the merge handler and
`status` serve every type through one path, and a new type is one core
module, its handlers and one entry in `TYPES`.

Every state class keeps one small contract (riak_dt's, in Python): an empty
state stands for the absent key, `merge` is commutative, associative and
idempotent, `to_wire` is what peers exchange and `from_wire` validates it
(raising `Malformed`), `to_stored` is what the node's own store keeps and
`from_stored` reads it back trusting its invariants.  Operations return new
states; none mutates one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, Self

from replica.crdt.clocked_siblings import ClockedSiblings
from replica.crdt.lww import LWWRegister
from replica.crdt.mv_register import MVRegister
from replica.crdt.mvcc import VersionChain
from replica.crdt.pn_counter import PNCounter


class State(Protocol):
    """What every data type's state offers the shell."""

    def merge(self, other: Self) -> Self: ...

    def to_wire(self) -> Any: ...

    def to_stored(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class DataType:
    """One data type, as the node's shell sees it."""

    name: str
    """The keyspace and the prefix of its messages (`mv` for `mv_write`, `mv_merge`)."""
    tag: int
    """The type tag of its stored records: never reused, so old data stays readable."""
    empty: Any
    """The state of an absent key (riak_dt's `new`); None for a type that has none (LWW)."""
    from_wire: Callable[[Any], Any]
    """A peer's state, validated; raises `Malformed`."""
    from_stored: Callable[[Any], Any]
    """A state this node stored, read back trusting its invariants; raises on a wrong shape."""
    state_field: str
    """The field of a `<name>_merge` delta that carries the state."""
    count_siblings: Callable[[Any], int] | None = None
    """How many siblings a state holds, for a type whose states are lists of siblings:
    counted in `max_siblings`, split across messages when large.  None for other types."""
    newest_timestamp: Callable[[Any], int | None] | None = None
    """The newest hybrid-clock timestamp a state carries, for the node's clock to observe."""
    collect: Callable[[Any, int], tuple[Any, int]] | None = None
    """Forget history no read at or above a horizon can see: (state, how much went)."""
    holds_nothing: Callable[[Any], bool] | None = None
    """Whether a state is as good as an absent key (not kept); default: equal to `empty`."""
    holds_tombstone: Callable[[Any], bool] | None = None
    """Whether a state remembers a delete, for a type with deletes: counted in `status`."""
    only_tombstone: Callable[[Any], bool] | None = None
    """Whether a state holds nothing but a tombstone: a key a node drops once every node holds
    it (`replica.replication.tombstones`)."""
    issued_by: Callable[[Any, str], int] | None = None
    """The highest counter of an actor's a state holds, for a type whose writes number their
    events per key: a node that drops the key keeps its own counters above it."""

    @property
    def merge_type(self) -> str:
        return f"{self.name}_merge"

    def is_empty(self, state: Any) -> bool:
        if self.holds_nothing is not None:
            return self.holds_nothing(state)
        return bool(state == self.empty)

    @property
    def has_siblings(self) -> bool:
        return self.count_siblings is not None

    def size(self, state: Any) -> int:
        """How many siblings a state holds (0 for an absent key or a type without siblings)."""
        count = self.count_siblings
        return 0 if count is None or state is None else count(state)


def _sibling_count(siblings: ClockedSiblings) -> int:
    return len(siblings.siblings)


def _newest_version(chain: VersionChain) -> int | None:
    newest = chain.newest()
    return None if newest is None else newest.timestamp


def _no_versions(chain: VersionChain) -> bool:
    return not chain.versions


def _lww_timestamp(register: LWWRegister) -> int:
    return register.timestamp


def _mv_tombstone(register: MVRegister) -> bool:
    return bool(register.deleted)


def _mv_only_tombstone(register: MVRegister) -> bool:
    return not register.siblings and bool(register.deleted)


def _mv_sibling_count(register: MVRegister) -> int:
    return len(register.siblings)


def _mv_issued_by(register: MVRegister, actor: str) -> int:
    return register.context().get(actor, 0)


def _kv_only_tombstone(siblings: ClockedSiblings) -> bool:
    return not siblings.siblings and bool(siblings.deleted)


def _mvcc_only_tombstone(chain: VersionChain) -> bool:
    return bool(chain.versions) and all(v.deleted for v in chain.versions)


def _kv_tombstone(siblings: ClockedSiblings) -> bool:
    return bool(siblings.deleted)


def _mvcc_tombstone(chain: VersionChain) -> bool:
    return any(v.deleted for v in chain.versions)


def _lww_tombstone(register: LWWRegister) -> bool:
    return register.deleted


MV = DataType(
    "mv",
    0x01,
    MVRegister(),
    MVRegister.from_wire,
    MVRegister.from_stored,
    "siblings",
    count_siblings=_mv_sibling_count,
    holds_tombstone=_mv_tombstone,
    only_tombstone=_mv_only_tombstone,
    issued_by=_mv_issued_by,
)
KV = DataType(
    "kv",
    0x02,
    ClockedSiblings(),
    ClockedSiblings.from_wire,
    ClockedSiblings.from_stored,
    "siblings",
    count_siblings=_sibling_count,
    holds_tombstone=_kv_tombstone,
    only_tombstone=_kv_only_tombstone,
)
MVCC = DataType(
    "mvcc",
    0x03,
    VersionChain(),
    VersionChain.from_wire,
    VersionChain.from_stored,
    "state",
    newest_timestamp=_newest_version,
    collect=VersionChain.collect,
    holds_nothing=_no_versions,
    holds_tombstone=_mvcc_tombstone,
    only_tombstone=_mvcc_only_tombstone,
)
LWW = DataType(
    "lww",
    0x04,
    None,
    LWWRegister.from_wire,
    LWWRegister.from_stored,
    "state",
    newest_timestamp=_lww_timestamp,
    holds_tombstone=_lww_tombstone,
    only_tombstone=_lww_tombstone,
)

COUNTER = DataType(
    "counter",
    0x05,
    PNCounter(),
    PNCounter.from_wire,
    PNCounter.from_stored,
    "state",
)

TYPES: tuple[DataType, ...] = (MV, KV, MVCC, LWW, COUNTER)
"""Every data type, in the order `status`, storage and anti-entropy list them."""
BY_NAME: dict[str, DataType] = {t.name: t for t in TYPES}
BY_TAG: dict[int, DataType] = {t.tag: t for t in TYPES}
BY_MERGE_TYPE: dict[str, DataType] = {t.merge_type: t for t in TYPES}
NAMES: tuple[str, ...] = tuple(BY_NAME)
