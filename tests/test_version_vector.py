"""Version vectors and dots: join is a semilattice, and the wire form is strict."""

from __future__ import annotations

from functools import reduce

from hypothesis import given
from hypothesis import strategies as st

from replica.crdt import version_vector as vv
from replica.crdt.version_vector import Dot
from tests.strategies_mv import descends

NODES = ["n1", "n2", "n3", "n4"]

vectors = st.dictionaries(st.sampled_from(NODES), st.integers(1, 6), max_size=4)
dots = st.builds(Dot, st.sampled_from(NODES), st.integers(1, 7))


# -- join ----------------------------------------------------------------------------


@given(a=vectors)
def test_join_idempotent(a) -> None:
    assert vv.join(a, a) == a


@given(a=vectors, b=vectors)
def test_join_commutative(a, b) -> None:
    assert vv.join(a, b) == vv.join(b, a)


@given(a=vectors, b=vectors, c=vectors)
def test_join_associative(a, b, c) -> None:
    assert vv.join(vv.join(a, b), c) == vv.join(a, vv.join(b, c))


@given(a=vectors, b=vectors)
def test_join_is_an_upper_bound(a, b) -> None:
    joined = vv.join(a, b)
    assert descends(joined, a)
    assert descends(joined, b)


@given(a=vectors, b=vectors, c=vectors)
def test_join_is_the_least_upper_bound(a, b, c) -> None:
    assert descends(c, vv.join(a, b)) == (descends(c, a) and descends(c, b))


@given(a=vectors, b=vectors)
def test_join_takes_the_entrywise_maximum(a, b) -> None:
    joined = vv.join(a, b)
    assert set(joined) == set(a) | set(b)
    for node, counter in joined.items():
        assert counter == max(a.get(node, 0), b.get(node, 0))


@given(a=vectors, b=vectors)
def test_join_leaves_its_arguments_alone(a, b) -> None:
    a_before, b_before = dict(a), dict(b)
    joined = vv.join(a, b)
    joined["n9"] = 1
    assert a == a_before
    assert b == b_before


def test_join_with_empty_is_a_copy() -> None:
    a = {"n1": 2}
    joined = vv.join(a, {})
    assert joined == a
    assert joined is not a


@given(many=st.lists(vectors, max_size=5))
def test_join_all_is_a_fold_of_join(many) -> None:
    assert vv.join_all(many) == reduce(vv.join, many, {})


def test_join_all_of_nothing_is_the_empty_history() -> None:
    assert vv.join_all([]) == {}


def test_join_all_leaves_its_arguments_alone() -> None:
    a = {"n1": 1}
    joined = vv.join_all([a, {"n1": 3}])
    assert joined == {"n1": 3}
    assert a == {"n1": 1}


# -- covers ------------------------------------------------------


def test_covers_every_event_up_to_the_entry() -> None:
    history = {"n1": 3}
    assert vv.covers(history, Dot("n1", 1))
    assert vv.covers(history, Dot("n1", 3))
    assert not vv.covers(history, Dot("n1", 4))
    assert not vv.covers(history, Dot("n2", 1))
    assert not vv.covers({}, Dot("n1", 1))


@given(a=vectors, dot=dots)
def test_covers_reads_the_dots_node_entry(a, dot) -> None:
    assert vv.covers(a, dot) == (a.get(dot.node, 0) >= dot.counter)
