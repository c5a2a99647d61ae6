"""Hypothesis strategies for reachable states of the client-clocked KV, MVCC, LWW and counter types.

A state is reachable when some sequence of client operations and replica
merges on a small simulated cluster produces it.  Building states that way,
rather than from arbitrary field values, keeps the laws honest: a hand-built
sibling set that is not an antichain, or a version chain with a gap below its
floor, is a state no node can hold, and a law failing on it says nothing.

Each type comes with a `Simulation`: its empty state, a strategy of client
operations (deletes among them) and how a replica applies one.  The law suite reuses these to run
whole clusters, so the operations here are the only definition of what
clients can do to a type in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Generic, TypeVar

from hypothesis import assume
from hypothesis import strategies as st

from replica.crdt.clocked_siblings import Clock, ClockedSiblings, ClockedValue, NotCovered
from replica.crdt.lww import LWWRegister
from replica.crdt.mvcc import TimestampConflict, VersionChain
from replica.crdt.pn_counter import PNCounter

S = TypeVar("S")

REPLICAS = ("n1", "n2", "n3")

# Small pools make collisions (equal clocks, equal timestamps, equal values) common.
# 1 and true, or dictionaries in different key order, stress canonical equality.
json_values = st.one_of(
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 2),
    st.booleans(),
    st.none(),
    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 1), max_size=2),
)


@dataclass(frozen=True)
class MergeFrom:
    """A replica takes in another replica's whole state."""

    source: int


@dataclass(frozen=True)
class Simulation(Generic[S]):
    """How to drive one data type on simulated replicas.

    `apply(state, replica, op)` returns the new state and what the operation
    stored (fed to sequential models); `merge` must accept `initial`.
    """

    initial: S
    ops: st.SearchStrategy[Any]
    apply: Callable[[S, str, Any], tuple[S, list[Any]]]
    merge: Callable[[S, S], S]


@st.composite
def reachable(
    draw: st.DrawFn, sim: Simulation[S], replicas: int = 3, max_steps: int = 20
) -> list[S]:
    """Every replica's state after random operations and merges among `replicas` nodes."""
    states = [sim.initial] * replicas
    step = st.tuples(
        st.integers(0, replicas - 1),
        st.one_of(sim.ops, sim.ops, st.builds(MergeFrom, st.integers(0, replicas - 1))),
    )
    for target, op in draw(st.lists(step, min_size=max_steps // 4, max_size=max_steps)):
        if isinstance(op, MergeFrom):
            states[target] = sim.merge(states[target], states[op.source])
        else:
            states[target], _ = sim.apply(states[target], REPLICAS[target % len(REPLICAS)], op)
    return states


# -- client-clocked KV -------------------------------------------------------------

clocks = st.lists(st.integers(0, 3), max_size=3).map(tuple)


@dataclass(frozen=True)
class KvPut:
    value: Any
    clock: Clock


@dataclass(frozen=True)
class KvResolve:
    value: Any
    clock: Clock


@dataclass(frozen=True)
class KvDelete:
    clock: Clock


@dataclass(frozen=True)
class KvReadDelete:
    """A careful client: reads the siblings, then deletes with a clock above all of them."""

    position: int


@dataclass(frozen=True)
class KvTombstone:
    """What a delete stored, for the sequential model."""

    clock: Clock


@dataclass(frozen=True)
class KvReadModifyWrite:
    """A careful client: reads the siblings, then writes one clock above all of them."""

    value: Any
    position: int
    resolve: bool


def clock_above(siblings: ClockedSiblings, position: int) -> Clock:
    """The position-wise maximum of the siblings' clocks, bumped at `position`."""
    top = [
        max(entries)
        for entries in zip_longest(*(s.clock for s in siblings.siblings), [0], fillvalue=0)
    ]
    top += [0] * (position + 1 - len(top))
    top[position] += 1
    return tuple(top)


def apply_kv(state: ClockedSiblings, replica: str, op: Any) -> tuple[ClockedSiblings, list[Any]]:
    if isinstance(op, KvReadDelete):
        op = KvDelete(clock_above(state, op.position))
    if isinstance(op, KvDelete):
        deleted, status = state.delete(op.clock)
        stored = status == "deleted" and deleted != state
        return deleted, [KvTombstone(op.clock)] if stored else []
    if isinstance(op, KvReadModifyWrite):
        op = (KvResolve if op.resolve else KvPut)(op.value, clock_above(state, op.position))
    if isinstance(op, KvPut):
        updated, _ = state.put(op.value, op.clock)
        # a rejected write or an idempotent retry stores nothing
        return updated, [] if updated is state else [ClockedValue(op.value, op.clock)]
    try:
        return state.resolve(op.value, op.clock), [ClockedValue(op.value, op.clock)]
    except NotCovered:
        return state, []


KV = Simulation(
    initial=ClockedSiblings(),
    ops=st.one_of(
        st.builds(KvPut, json_values, clocks),
        st.builds(KvResolve, json_values, clocks),
        st.builds(KvReadModifyWrite, json_values, st.integers(0, 2), st.booleans()),
        st.builds(KvDelete, clocks),
        st.builds(KvReadDelete, st.integers(0, 2)),
    ),
    apply=apply_kv,
    merge=ClockedSiblings.merge,
)


def clocked_siblings() -> st.SearchStrategy[ClockedSiblings]:
    return reachable(KV).flatmap(st.sampled_from)


# -- MVCC --------------------------------------------------------------------------


@dataclass(frozen=True)
class MvccPut:
    timestamp: int
    value: Any


@dataclass(frozen=True)
class MvccPutNext:
    """A put just above the replica's newest version, which always succeeds."""

    gap: int
    value: Any


@dataclass(frozen=True)
class MvccDelete:
    """A tombstone version `gap` above the replica's newest version, or at `timestamp`."""

    gap: int
    timestamp: int | None = None


@dataclass(frozen=True)
class MvccCollect:
    """Garbage collection with the horizon `lag` below the replica's newest version."""

    lag: int


def apply_mvcc(state: VersionChain, replica: str, op: Any) -> tuple[VersionChain, list[Any]]:
    newest = state.newest()
    top = -1 if newest is None else newest.timestamp
    if isinstance(op, MvccCollect):
        return state.collect(top - op.lag)[0], []
    if isinstance(op, MvccPutNext):
        op = MvccPut(top + op.gap, op.value)
    deleted = isinstance(op, MvccDelete)
    if isinstance(op, MvccDelete):
        op = MvccPut(top + op.gap if op.timestamp is None else op.timestamp, None)
    try:
        updated, _ = state.put(op.timestamp, op.value, replica, deleted=deleted)
    except TimestampConflict:
        return state, []
    return updated, [] if updated is state else [updated.versions[-1]]


MVCC = Simulation(
    initial=VersionChain(),
    ops=st.one_of(
        st.builds(MvccPut, st.integers(0, 30), json_values),
        st.builds(MvccPutNext, st.integers(1, 4), json_values),
        st.builds(MvccCollect, st.integers(0, 6)),
        st.builds(MvccDelete, st.integers(1, 4)),
        st.builds(MvccDelete, st.just(0), st.integers(0, 30)),
    ),
    apply=apply_mvcc,
    merge=VersionChain.merge,
)


def version_chains() -> st.SearchStrategy[VersionChain]:
    return reachable(MVCC).flatmap(st.sampled_from)


# -- LWW ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LwwWrite:
    value: Any
    timestamp: int


def merge_lww(a: LWWRegister | None, b: LWWRegister | None) -> LWWRegister | None:
    """Merge where None is a replica that has never heard of the key."""
    if a is None or b is None:
        return b if a is None else a
    return a.merge(b)


@dataclass(frozen=True)
class LwwDelete:
    timestamp: int


def apply_lww(
    state: LWWRegister | None, replica: str, op: LwwWrite | LwwDelete
) -> tuple[LWWRegister | None, list[Any]]:
    if isinstance(op, LwwDelete):
        written = LWWRegister.tombstone(op.timestamp, replica)
    else:
        written = LWWRegister(op.value, op.timestamp, replica)
    return merge_lww(state, written), [written]


LWW: Simulation[LWWRegister | None] = Simulation(
    initial=None,
    # few timestamps, so equal timestamps (and equal timestamp and replica) are common
    ops=st.one_of(
        st.builds(LwwWrite, json_values, st.integers(0, 4)),
        st.builds(LwwDelete, st.integers(0, 4)),
    ),
    apply=apply_lww,
    merge=merge_lww,
)


@st.composite
def lww_registers(draw: st.DrawFn) -> LWWRegister:
    written = [s for s in draw(reachable(LWW)) if s is not None]
    assume(written)
    return draw(st.sampled_from(written))


# -- PN-counter ----------------------------------------------------------------------


@dataclass(frozen=True)
class CounterAdd:
    delta: int


@dataclass(frozen=True)
class CounterReset:
    """A delete: takes away the total the replica observes."""


def apply_counter(
    state: PNCounter, replica: str, op: CounterAdd | CounterReset
) -> tuple[PNCounter, list[Any]]:
    if isinstance(op, CounterReset):
        return state.reset(replica), [-state.value]
    return state.add(replica, op.delta), [op.delta]


COUNTER: Simulation[PNCounter] = Simulation(
    initial=PNCounter(),
    ops=st.one_of(st.builds(CounterAdd, st.integers(-5, 5)), st.builds(CounterReset)),
    apply=apply_counter,
    merge=PNCounter.merge,
)


def pn_counters() -> st.SearchStrategy[PNCounter]:
    return reachable(COUNTER).flatmap(st.sampled_from)
