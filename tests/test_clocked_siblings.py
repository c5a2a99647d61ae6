"""Client-clocked siblings: every put branch, resolve, merge details and wire validation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.crdt.clocked_siblings import (
    ClockedSiblings,
    ClockedValue,
    NotCovered,
    Order,
    PutResult,
    clock_from_wire,
    compare,
)
from replica.crdt.malformed import MAX_INT, Malformed
from tests.strategies_types import clocked_siblings, clocks, json_values

EMPTY = ClockedSiblings()


def put_all(*writes: tuple[object, tuple[int, ...]]) -> ClockedSiblings:
    state = EMPTY
    for value, clock in writes:
        state, _ = state.put(value, clock)
    return state


# -- the seed 001 sample -------------------------------------------------------------


def test_seed_sample_written_conflict_get_resolve() -> None:
    state, result = EMPTY.put("Alice", (1, 0))
    assert result == PutResult("written", 1)
    state, result = state.put("Bob", (0, 1))
    assert result == PutResult("conflict", 2)
    assert state.to_wire() == [
        {"value": "Alice", "clock": [1, 0]},
        {"value": "Bob", "clock": [0, 1]},
    ]
    resolved = state.resolve("Alice+Bob", (1, 1))
    assert resolved.to_wire() == [{"value": "Alice+Bob", "clock": [1, 1]}]


def test_seed_simple_write_to_empty_key() -> None:
    state, result = EMPTY.put("hello", (1, 0))
    assert result.status == "written"
    assert state.to_wire() == [{"value": "hello", "clock": [1, 0]}]


# -- put branches ----------------------------------------------------------------------


def test_dominating_put_replaces_every_sibling() -> None:
    state = put_all(("a", (1, 0)), ("b", (0, 1)))
    state, result = state.put("c", (2, 2))
    assert result == PutResult("written", 1)
    assert state.to_wire() == [{"value": "c", "clock": [2, 2]}]


def test_stale_put_is_rejected_and_changes_nothing() -> None:
    state = put_all(("a", (2, 1)))
    after, result = state.put("old", (1, 1))
    assert result == PutResult("rejected", 1)
    assert after is state


def test_put_with_an_equal_clock_and_another_value_is_stale() -> None:
    state = put_all(("a", (1, 0)))
    after, result = state.put("b", (1,))
    assert result.status == "rejected"
    assert after == state


def test_stale_against_one_of_several_siblings() -> None:
    state = put_all(("a", (2, 0)), ("b", (0, 2)))
    _, result = state.put("c", (1, 1, 0))
    assert result == PutResult("conflict", 3)
    after, result = state.put("d", (0, 1))
    assert result == PutResult("rejected", 2)
    assert after == state


def test_identical_retry_is_written_and_unchanged() -> None:
    state = put_all(("a", (1, 0)), ("b", (0, 1)))
    after, result = state.put("a", (1, 0))
    assert result == PutResult("written", 2)
    assert after is state


def test_identical_retry_with_a_differently_spelled_clock() -> None:
    state = put_all(("a", (1, 0)))
    after, result = state.put("a", (1,))
    assert result.status == "written"
    assert after.to_wire() == [{"value": "a", "clock": [1, 0]}]


def test_retry_uses_json_equality_not_python_equality() -> None:
    state = put_all((1, (1,)))
    _, result = state.put(True, (1,))
    assert result.status == "rejected"
    _, result = state.put({"x": 1, "y": 2}, (1,))
    assert result.status == "rejected"
    keyed = put_all(({"x": 1, "y": 2}, (1,)))
    _, result = keyed.put({"y": 2, "x": 1}, (1,))
    assert result.status == "written"


def test_conflict_drops_only_the_siblings_the_clock_dominates() -> None:
    state = put_all(("a", (1, 0, 0)), ("b", (0, 1, 0)), ("c", (0, 0, 1)))
    after, result = state.put("d", (2, 1, 0))
    assert result == PutResult("conflict", 2)
    assert [s.value for s in after.siblings] == ["d", "c"]


def test_missing_positions_count_as_zero() -> None:
    assert compare((1,), (1, 0)) is Order.EQUAL
    assert compare((), (0, 0, 0)) is Order.EQUAL
    assert compare((1,), (0, 1)) is Order.CONCURRENT
    assert compare((1, 1), (1,)) is Order.AFTER
    assert compare((1,), (1, 1)) is Order.BEFORE
    assert compare((0, 0, 1), (5,)) is Order.CONCURRENT


def test_clocks_are_echoed_as_sent() -> None:
    state, _ = EMPTY.put("a", (1, 0, 0))
    assert state.to_wire() == [{"value": "a", "clock": [1, 0, 0]}]


def test_empty_clock_writes_an_empty_key_then_is_stale() -> None:
    state, result = EMPTY.put("a", ())
    assert result.status == "written"
    _, result = state.put("b", (0,))
    assert result.status == "rejected"


@given(state=clocked_siblings(), value=json_values, clock=clocks)
def test_put_keeps_an_antichain_and_reports_the_count(state, value, clock) -> None:
    after, result = state.put(value, clock)
    assert result.siblings == len(after.siblings)
    for a in after.siblings:
        for b in after.siblings:
            assert compare(a.clock, b.clock) in (Order.EQUAL, Order.CONCURRENT)
    if result.status == "rejected":
        assert after == state
    else:
        assert ClockedValue(value, clock) in after.siblings or after == state


# -- resolve ---------------------------------------------------------------------------


def test_resolve_refusal_lists_the_uncovered_clocks_and_changes_nothing() -> None:
    state = put_all(("a", (2, 0)), ("b", (0, 2)), ("c", (1, 1)))
    with pytest.raises(NotCovered) as caught:
        state.resolve("x", (1, 1, 1))
    assert caught.value.uncovered == [(2, 0), (0, 2)]
    with pytest.raises(NotCovered) as caught:
        state.resolve("x", (2, 1))
    assert caught.value.uncovered == [(0, 2)]
    assert state == put_all(("a", (2, 0)), ("b", (0, 2)), ("c", (1, 1)))


def test_resolve_needs_strict_dominance() -> None:
    state = put_all(("a", (1, 1)))
    with pytest.raises(NotCovered) as caught:
        state.resolve("x", (1, 1, 0))
    assert caught.value.uncovered == [(1, 1)]


def test_resolve_on_an_empty_key_writes() -> None:
    assert EMPTY.resolve("x", ()).to_wire() == [{"value": "x", "clock": []}]


# -- merge -------------------------------------------------------------------------------


def test_merge_keeps_equal_clocks_with_different_values() -> None:
    left = put_all(("a", (1, 1)))
    right = put_all(("b", (1, 1)))
    merged = left.merge(right)
    assert [s.value for s in merged.siblings] == ["a", "b"]
    assert merged == right.merge(left)


def test_merge_drops_dominated_and_keeps_the_longer_spelling() -> None:
    old = put_all(("a", (1,)))
    newer = put_all(("b", (1, 1)))
    assert old.merge(newer) == newer
    short = put_all(("a", (1,)))
    long = put_all(("a", (1, 0, 0)))
    assert short.merge(long).to_wire() == [{"value": "a", "clock": [1, 0, 0]}]
    assert long.merge(short).to_wire() == [{"value": "a", "clock": [1, 0, 0]}]


def test_order_is_descending_clock_then_canonical_value() -> None:
    state = put_all(("z", (0, 0, 1)), ("y", (0, 1)), ("x", (1,)))
    assert [s.clock for s in state.siblings] == [(1,), (0, 1), (0, 0, 1)]
    tied = put_all(("b", (1,))).merge(put_all(("a", (1,))))
    assert [s.value for s in tied.siblings] == ["a", "b"]


# -- wire ----------------------------------------------------------------------------


@given(state=clocked_siblings())
def test_wire_round_trip(state) -> None:
    assert ClockedSiblings.from_wire(state.to_wire()) == state


def test_from_wire_normalises() -> None:
    raw = [
        {"value": "b", "clock": [0, 1]},
        {"value": "old", "clock": [0, 0]},
        {"value": "a", "clock": [1]},
        {"value": "a", "clock": [1, 0]},
    ]
    assert ClockedSiblings.from_wire(raw).to_wire() == [
        {"value": "a", "clock": [1, 0]},
        {"value": "b", "clock": [0, 1]},
    ]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {"value": 1, "clock": [1]},
        [[1, [1]]],
        [{"clock": [1]}],
        [{"value": 1}],
        [{"value": 1, "clock": "1"}],
        [{"value": 1, "clock": [-1]}],
        [{"value": 1, "clock": [True]}],
        [{"value": 1, "clock": [1.0]}],
        [{"value": 1, "clock": [MAX_INT + 1]}],
    ],
)
def test_from_wire_rejects(raw) -> None:
    with pytest.raises(Malformed):
        ClockedSiblings.from_wire(raw)


def test_clock_from_wire_accepts_any_length() -> None:
    assert clock_from_wire([]) == ()
    assert clock_from_wire([0, MAX_INT, 3, 0]) == (0, MAX_INT, 3, 0)


@pytest.mark.parametrize("raw", [None, 3, "1,0", [1, None], [False], [1, -2], [2**63]])
def test_clock_from_wire_rejects(raw) -> None:
    with pytest.raises(Malformed, match="clock"):
        clock_from_wire(raw)


def test_malformed_text_names_the_sibling() -> None:
    with pytest.raises(Malformed, match="sibling 1"):
        ClockedSiblings.from_wire([{"value": 1, "clock": [1]}, {"value": 2, "clock": [-1]}])


@given(st.lists(st.tuples(json_values, clocks), max_size=6))
def test_from_wire_is_order_insensitive(pairs) -> None:
    raw = [{"value": v, "clock": list(c)} for v, c in pairs]
    assert ClockedSiblings.from_wire(raw) == ClockedSiblings.from_wire(raw[::-1])


# -- deletes ----------------------------------------------------------------------------------


def two_siblings() -> ClockedSiblings:
    state, _ = ClockedSiblings().put("a", (1, 0))
    state, _ = state.put("b", (0, 1))
    return state


def test_a_delete_removes_the_dominated_siblings_and_keeps_its_clock() -> None:
    state, status = two_siblings().delete((2, 0))
    assert status == "deleted"
    assert [s.value for s in state.siblings] == ["b"]
    assert state.deleted == ((2, 0),)
    assert state.to_wire() == [{"value": "b", "clock": [0, 1]}, {"deleted": [2, 0]}]


def test_a_stale_delete_is_rejected_and_a_repeated_one_is_a_retry() -> None:
    state = two_siblings()
    assert state.delete((0, 1)) == (state, "rejected")  # equal to b's clock
    assert state.delete((1,)) == (state, "rejected")
    deleted, _ = state.delete((2, 0))
    assert deleted.delete((2, 0, 0)) == (deleted, "deleted")
    assert deleted.delete((1, 0)) == (deleted, "rejected")  # below the tombstone


def test_a_deleted_sibling_does_not_come_back_from_a_replica_that_still_holds_it() -> None:
    old = two_siblings()
    deleted, _ = old.delete((2, 1))
    assert deleted.siblings == () and deleted.deleted == ((2, 1),)
    assert deleted.merge(old) == deleted
    assert old.merge(deleted) == deleted


def test_a_put_at_or_below_a_tombstone_is_stale_and_one_above_it_drops_it() -> None:
    deleted, _ = two_siblings().delete((2, 1))
    assert deleted.put("x", (2, 1))[1].status == "rejected"
    assert deleted.put("x", (1, 1))[1].status == "rejected"
    written, result = deleted.put("y", (3, 1))
    assert result.status == "written"
    assert written.deleted == () and [s.value for s in written.siblings] == ["y"]
    concurrent, result = deleted.put("z", (0, 2))
    assert result.status == "written"
    assert concurrent.deleted == ((2, 1),)  # it has not seen the delete: the tombstone stays


def test_concurrent_deletes_keep_both_tombstones_not_their_maximum() -> None:
    state, _ = ClockedSiblings().put("c", (1, 1))
    left, _ = ClockedSiblings().delete((2, 0))
    right, _ = ClockedSiblings().delete((0, 2))
    merged = left.merge(right).merge(state)
    assert merged.deleted == ((2, 0), (0, 2))
    assert [s.value for s in merged.siblings] == ["c"]  # neither delete had seen it


def test_a_resolve_below_a_tombstone_is_not_covered() -> None:
    deleted, _ = two_siblings().delete((2, 1))
    with pytest.raises(NotCovered) as refused:
        deleted.resolve("r", (1, 1))
    assert refused.value.uncovered == [(2, 1)]


def test_tombstones_round_trip_and_old_records_still_load() -> None:
    deleted, _ = two_siblings().delete((2, 0))
    assert ClockedSiblings.from_wire(deleted.to_wire()) == deleted
    assert ClockedSiblings.from_stored(deleted.to_stored()) == deleted
    old = [{"value": "a", "clock": [1, 0]}]
    assert ClockedSiblings.from_stored(old) == ClockedSiblings.from_wire(old)
    with pytest.raises(Malformed):
        ClockedSiblings.from_wire([{"deleted": "x"}])
