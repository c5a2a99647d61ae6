"""Version vectors and dots: join is a semilattice, and the wire form is strict."""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.crdt import version_vector as vv
from replica.crdt.malformed import MAX_INT, Malformed
from replica.crdt.version_vector import Dot

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
    assert vv.descends(joined, a)
    assert vv.descends(joined, b)


@given(a=vectors, b=vectors, c=vectors)
def test_join_is_the_least_upper_bound(a, b, c) -> None:
    assert vv.descends(c, vv.join(a, b)) == (vv.descends(c, a) and vv.descends(c, b))


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


# -- covers, descends, with_dot ------------------------------------------------------


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


@given(a=vectors)
def test_descends_reflexive(a) -> None:
    assert vv.descends(a, a)
    assert vv.descends(a, {})


@given(a=vectors, b=vectors)
def test_descends_antisymmetric(a, b) -> None:
    if vv.descends(a, b) and vv.descends(b, a):
        assert a == b


@given(a=vectors, b=vectors, c=vectors)
def test_descends_transitive(a, b, c) -> None:
    if vv.descends(a, b) and vv.descends(b, c):
        assert vv.descends(a, c)


def test_descends_examples() -> None:
    assert vv.descends({"n1": 2, "n2": 1}, {"n1": 1})
    assert not vv.descends({"n1": 1}, {"n1": 1, "n2": 1})
    assert not vv.descends({"n1": 2}, {"n2": 1})
    assert not vv.descends({}, {"n1": 1})


@given(a=vectors, dot=dots)
def test_with_dot_covers_the_dot_and_keeps_the_rest(a, dot) -> None:
    plus = vv.with_dot(a, dot)
    assert vv.covers(plus, dot)
    assert vv.descends(plus, a)
    assert plus == vv.join(a, {dot.node: dot.counter})


def test_with_dot_never_lowers_an_entry() -> None:
    assert vv.with_dot({"n1": 5}, Dot("n1", 3)) == {"n1": 5}
    assert vv.with_dot({"n1": 2}, Dot("n1", 3)) == {"n1": 3}
    assert vv.with_dot({}, Dot("n2", 1)) == {"n2": 1}


def test_with_dot_leaves_its_argument_alone() -> None:
    a = {"n1": 1}
    assert vv.with_dot(a, Dot("n1", 2)) == {"n1": 2}
    assert a == {"n1": 1}


# -- wire form -----------------------------------------------------------------------


def test_from_wire_drops_zero_entries() -> None:
    assert vv.from_wire({"n1": 0, "n2": 3}) == {"n2": 3}
    assert vv.from_wire({"n1": 0}) == {}


@given(a=vectors)
def test_from_wire_round_trips_a_fresh_dict(a) -> None:
    decoded = vv.from_wire(a)
    assert decoded == a
    assert decoded is not a


def test_from_wire_accepts_the_largest_counter() -> None:
    assert vv.from_wire({"n1": MAX_INT}) == {"n1": MAX_INT}


@pytest.mark.parametrize(
    "counter", [-1, True, False, 1.0, 1.5, "1", None, [1], {"c": 1}, MAX_INT + 1]
)
def test_from_wire_rejects_entries_that_are_not_counters(counter) -> None:
    with pytest.raises(Malformed, match="'n1'"):
        vv.from_wire({"n2": 1, "n1": counter})


@pytest.mark.parametrize("raw", [None, [], [["n1", 1]], "n1", 1, True])
def test_from_wire_rejects_non_objects(raw) -> None:
    with pytest.raises(Malformed, match="context must be an object"):
        vv.from_wire(raw, "context")


def test_dot_round_trips() -> None:
    dot = Dot("n1", 4)
    assert dot.to_wire() == ["n1", 4]
    assert Dot.from_wire(["n1", 4]) == dot


@pytest.mark.parametrize(
    "raw",
    [
        ["n1", 0],
        ["n1", -1],
        ["n1", True],
        ["n1", 1.0],
        ["n1", "1"],
        ["n1", MAX_INT + 1],
        [1, 1],
        [None, 1],
        ["n1"],
        ["n1", 1, 2],
        [],
        ("n1", 1),
        {"node": "n1", "counter": 1},
        "n1:1",
        None,
    ],
)
def test_dot_from_wire_rejects_malformed_dots(raw) -> None:
    with pytest.raises(Malformed, match="dot"):
        Dot.from_wire(raw)


def test_dots_order_by_node_then_counter() -> None:
    assert sorted([Dot("n2", 1), Dot("n1", 10), Dot("n1", 2)]) == [
        Dot("n1", 2),
        Dot("n1", 10),
        Dot("n2", 1),
    ]
