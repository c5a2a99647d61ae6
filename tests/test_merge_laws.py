"""The merge laws, once, for every replicated data type.

Each subject is a data type's reachable states and its merge.  State-based
replication converges only if merge is a join: idempotent (a re-delivered
state changes nothing), commutative and associative (delivery order does not
matter).  The cluster tests then run several replicas through random
operations and a random exchange schedule and check that they all end equal,
and, where a type has a simple sequential description, equal to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce
from itertools import zip_longest
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.crdt.canonical import canonical
from tests.strategies_types import (
    COUNTER,
    KV,
    LWW,
    MVCC,
    KvTombstone,
    MergeFrom,
    Simulation,
    clocked_siblings,
    lww_registers,
    pn_counters,
    version_chains,
)

try:
    from tests.strategies_mv import mv_registers
except ModuleNotFoundError as missing:
    if missing.name not in ("tests.strategies_mv", "replica.crdt.mv_register"):
        raise
    mv_registers = None


def merge(a: Any, b: Any) -> Any:
    return a.merge(b)


# -- sequential models: what the cluster should converge to, computed from the log ------


def _dominates(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    pairs = list(zip_longest(a, b, fillvalue=0))
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def kv_model(stored: list[Any], before: list[Any]) -> Any:
    """Every sibling ever stored that no other stored sibling nor any delete dominates."""
    survivors = {
        (tuple(v.clock), canonical(v.value))
        for v in stored
        if not isinstance(v, KvTombstone) and not any(_dominates(w.clock, v.clock) for w in stored)
    }
    # of equal clocks spelled differently, the longest spelling is the one kept
    longest = {}
    for clock, value in survivors:
        key = (_without_trailing_zeros(clock), value)
        if key not in longest or len(clock) > len(longest[key][0]):
            longest[key] = (clock, value)
    return set(longest.values())


def _without_trailing_zeros(clock: tuple[int, ...]) -> tuple[int, ...]:
    entries = list(clock)
    while entries and entries[-1] == 0:
        entries.pop()
    return tuple(entries)


def kv_view(state: Any) -> Any:
    return {(s.clock, canonical(s.value)) for s in state.siblings}


def mvcc_model(stored: list[Any], before: list[Any]) -> Any:
    """The winner at each timestamp above the highest floor any replica collected to."""
    floor = max(chain.floor for chain in before)
    winners: dict[int, Any] = {}
    for v in stored:
        if v.timestamp > floor:
            rank = (v.origin, v.deleted, canonical(v.value))
            if v.timestamp not in winners or rank > winners[v.timestamp]:
                winners[v.timestamp] = rank
    return floor, sorted((ts, *rank) for ts, rank in winners.items())


def mvcc_view(state: Any) -> Any:
    return state.floor, [
        (v.timestamp, v.origin, v.deleted, canonical(v.value)) for v in state.versions
    ]


def lww_model(stored: list[Any], before: list[Any]) -> Any:
    """The write with the greatest (timestamp, replica, tombstone first, value)."""
    ranks = [(w.timestamp, w.replica, w.deleted, canonical(w.value)) for w in stored]
    return max(ranks, default=None)


def lww_view(state: Any) -> Any:
    if state is None:
        return None
    return state.timestamp, state.replica, state.deleted, canonical(state.value)


def counter_model(stored: list[Any], before: list[Any]) -> Any:
    """The sum of every addition made anywhere (a delete adds minus what it observed)."""
    return sum(stored)


def counter_view(state: Any) -> Any:
    return state.value


# -- subjects --------------------------------------------------------------------------


@dataclass(frozen=True)
class Model:
    expected: Callable[[list[Any], list[Any]], Any]  # (everything stored, states before exchange)
    view: Callable[[Any], Any]


@dataclass(frozen=True)
class Subject:
    name: str
    states: Callable[[], st.SearchStrategy[Any]]
    merge: Callable[[Any, Any], Any]
    simulation: Simulation[Any] | None = None
    model: Model | None = None


SUBJECTS = [
    Subject("clocked_siblings", clocked_siblings, merge, KV, Model(kv_model, kv_view)),
    Subject("mvcc", version_chains, merge, MVCC, Model(mvcc_model, mvcc_view)),
    Subject("lww", lww_registers, merge, LWW, Model(lww_model, lww_view)),
    Subject("pn_counter", pn_counters, merge, COUNTER, Model(counter_model, counter_view)),
]
MV = Subject(
    "mv_register",
    mv_registers if callable(mv_registers) else (lambda: mv_registers or st.nothing()),
    merge,
)

ALL = [
    *(pytest.param(s, id=s.name) for s in SUBJECTS),
    pytest.param(
        MV,
        id=MV.name,
        marks=pytest.mark.skipif(mv_registers is None, reason="tests/strategies_mv.py not there"),
    ),
]
MODELLED = [pytest.param(s, id=s.name) for s in SUBJECTS if s.model is not None]


# -- the laws ----------------------------------------------------------------------------


@pytest.mark.parametrize("subject", ALL)
@given(data=st.data())
def test_merge_idempotent(subject: Subject, data: st.DataObject) -> None:
    a = data.draw(subject.states(), label="a")
    assert subject.merge(a, a) == a


@pytest.mark.parametrize("subject", ALL)
@given(data=st.data())
def test_merge_commutative(subject: Subject, data: st.DataObject) -> None:
    a = data.draw(subject.states(), label="a")
    b = data.draw(subject.states(), label="b")
    assert subject.merge(a, b) == subject.merge(b, a)


@pytest.mark.parametrize("subject", ALL)
@given(data=st.data())
def test_merge_associative(subject: Subject, data: st.DataObject) -> None:
    a = data.draw(subject.states(), label="a")
    b = data.draw(subject.states(), label="b")
    c = data.draw(subject.states(), label="c")
    m = subject.merge
    assert m(m(a, b), c) == m(a, m(b, c))


# -- whole clusters ------------------------------------------------------------------------


@dataclass
class Run:
    before: list[Any]  # each replica's state once the operations are done
    after: list[Any]  # each replica's state once everyone has heard from everyone
    stored: list[Any]  # what the operations stored, in order


def run_cluster(subject: Subject, data: st.DataObject) -> Run:
    """Random operations (and merges) on 3-5 replicas, then a random full exchange."""
    size = data.draw(st.integers(3, 5), label="replicas")
    stored: list[Any] = []
    sim = subject.simulation
    if sim is None:
        # A type known only by its states: every replica starts from a reachable one.
        states = [data.draw(subject.states(), label=f"replica {i}") for i in range(size)]
        join = subject.merge
    else:
        states = [sim.initial] * size
        join = sim.merge
        step = st.tuples(
            st.integers(0, size - 1),
            st.one_of(sim.ops, sim.ops, st.builds(MergeFrom, st.integers(0, size - 1))),
        )
        for target, op in data.draw(st.lists(step, max_size=25), label="operations"):
            if isinstance(op, MergeFrom):
                states[target] = join(states[target], states[op.source])
            else:
                states[target], new = sim.apply(states[target], f"n{target + 1}", op)
                stored.extend(new)
    before = list(states)
    heard = [{i} for i in range(size)]

    def send(source: int, target: int) -> None:
        states[target] = join(states[target], states[source])
        heard[target] |= heard[source]

    pairs = [(s, t) for s in range(size) for t in range(size) if s != t]
    for source, target in data.draw(st.lists(st.sampled_from(pairs), max_size=8), label="gossip"):
        send(source, target)
    order = data.draw(st.permutations(pairs), label="exchange order")
    while any(len(h) < size for h in heard):
        for source, target in order:
            if not heard[source] <= heard[target]:
                send(source, target)
    return Run(before, states, stored)


@pytest.mark.parametrize("subject", ALL)
@settings(max_examples=60)
@given(data=st.data())
def test_replicas_converge_in_any_exchange_order(subject: Subject, data: st.DataObject) -> None:
    run = run_cluster(subject, data)
    first = run.after[0]
    assert all(state == first for state in run.after)
    join = subject.simulation.merge if subject.simulation else subject.merge
    assert first == reduce(join, run.before)


@pytest.mark.parametrize("subject", MODELLED)
@settings(max_examples=60)
@given(data=st.data())
def test_converged_state_matches_sequential_model(subject: Subject, data: st.DataObject) -> None:
    run = run_cluster(subject, data)
    assert subject.model is not None
    assert subject.model.view(run.after[0]) == subject.model.expected(run.stored, run.before)
