"""LWW registers: which write wins, and the wire form."""

from __future__ import annotations

import pytest
from hypothesis import given

from replica.crdt.lww import LWWRegister
from replica.crdt.malformed import MAX_INT, Malformed
from tests.strategies_types import lww_registers


def test_greater_timestamp_wins() -> None:
    old = LWWRegister("old", 1, "n9")
    new = LWWRegister("new", 2, "n1")
    assert old.merge(new) == new
    assert new.merge(old) == new


def test_equal_timestamps_are_broken_by_replica_id() -> None:
    a = LWWRegister("from a", 5, "n1")
    b = LWWRegister("from b", 5, "n2")
    assert a.merge(b) == b
    assert b.merge(a) == b


def test_exact_tie_is_broken_by_canonical_value() -> None:
    a = LWWRegister("a", 5, "n1")
    b = LWWRegister("b", 5, "n1")
    assert a.merge(b).value == "b"
    assert b.merge(a).value == "b"


def test_json_values_that_python_calls_equal_are_different_writes() -> None:
    one = LWWRegister(1, 5, "n1")
    true = LWWRegister(True, 5, "n1")
    assert one != true
    assert one.merge(true) is true
    assert true.merge(one) is true


def test_key_order_does_not_make_a_different_write() -> None:
    assert LWWRegister({"a": 1, "b": 2}, 1, "n1") == LWWRegister({"b": 2, "a": 1}, 1, "n1")


@given(a=lww_registers(), b=lww_registers())
def test_merge_keeps_the_greater_timestamp_replica_pair(a, b) -> None:
    winner = a.merge(b)
    assert winner in (a, b)
    assert (winner.timestamp, winner.replica) == max(
        (a.timestamp, a.replica), (b.timestamp, b.replica)
    )


def test_wire_form() -> None:
    register = LWWRegister({"k": [1, 2]}, 7, "n3")
    assert register.to_wire() == {"value": {"k": [1, 2]}, "timestamp": 7, "replica": "n3"}
    assert LWWRegister.from_wire(register.to_wire()) == register


def test_from_wire_accepts_null_value_and_largest_timestamp() -> None:
    raw = {"value": None, "timestamp": MAX_INT, "replica": "n1"}
    assert LWWRegister.from_wire(raw) == LWWRegister(None, MAX_INT, "n1")


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [1, 2, "n1"],
        {"timestamp": 1, "replica": "n1"},
        {"value": 1, "replica": "n1"},
        {"value": 1, "timestamp": 1},
        {"value": 1, "timestamp": -1, "replica": "n1"},
        {"value": 1, "timestamp": True, "replica": "n1"},
        {"value": 1, "timestamp": MAX_INT + 1, "replica": "n1"},
        {"value": 1, "timestamp": 1, "replica": 1},
    ],
)
def test_from_wire_rejects(raw) -> None:
    with pytest.raises(Malformed):
        LWWRegister.from_wire(raw)


# -- deletes ----------------------------------------------------------------------------------


def test_a_tombstone_wins_over_writes_at_or_below_it_and_loses_to_later_ones() -> None:
    tombstone = LWWRegister.tombstone(10, "n2")
    for write in (
        LWWRegister("a", 10, "n2"),
        LWWRegister("a", 10, "n1"),
        LWWRegister("a", 9, "n3"),
    ):
        assert write.merge(tombstone) == tombstone.merge(write) == tombstone
    for write in (LWWRegister("b", 10, "n3"), LWWRegister("b", 11, "n1")):
        assert write.merge(tombstone) == tombstone.merge(write) == write


def test_a_tombstone_round_trips_and_an_old_register_still_loads() -> None:
    tombstone = LWWRegister.tombstone(10, "n2")
    wire = {"value": None, "timestamp": 10, "replica": "n2", "deleted": True}
    assert tombstone.to_wire() == wire
    assert LWWRegister.from_wire(wire) == LWWRegister.from_stored(wire) == tombstone
    old = {"value": None, "timestamp": 10, "replica": "n2"}
    assert not LWWRegister.from_stored(old).deleted
    assert LWWRegister.from_stored(old) != tombstone
    with pytest.raises(Malformed):
        LWWRegister.from_wire({**wire, "deleted": 1})
