"""MVCC version chains: the seed sample, conflicts, retries, GC numbering, merge and the wire."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.crdt.malformed import Malformed
from replica.crdt.mvcc import TimestampConflict, Version, VersionChain
from tests.strategies_types import json_values, version_chains

EMPTY = VersionChain()


def chain_of(*puts: tuple[int, object], origin: str = "n1") -> VersionChain:
    chain = EMPTY
    for timestamp, value in puts:
        chain, _ = chain.put(timestamp, value, origin)
    return chain


def test_seed_sample() -> None:
    chain, version = EMPTY.put(100, "v1", "n1")
    assert version == 1
    chain, version = chain.put(200, "v2", "n1")
    assert version == 2
    assert chain.read(150) == (Version(100, "v1", "n1"), 1)
    assert chain.read(250) == (Version(200, "v2", "n1"), 2)
    assert chain.read(None) == (Version(200, "v2", "n1"), 2)


def test_read_before_every_version_finds_nothing() -> None:
    assert chain_of((100, "v1")).read(99) is None
    assert EMPTY.read(None) is None
    assert chain_of((100, "v1")).read(100) == (Version(100, "v1", "n1"), 1)


@pytest.mark.parametrize("timestamp", [100, 150, 200])
def test_put_at_or_below_the_newest_is_a_conflict(timestamp: int) -> None:
    chain = chain_of((100, "v1"), (200, "v2"))
    with pytest.raises(TimestampConflict) as caught:
        chain.put(timestamp, "other", "n1")
    assert caught.value.newest == 200


@pytest.mark.parametrize(("timestamp", "value", "number"), [(100, "v1", 1), (200, "v2", 2)])
def test_identical_retry_returns_the_existing_version(timestamp, value, number) -> None:
    chain = chain_of((100, "v1"), (200, "v2"))
    assert chain.put(timestamp, value, "n2") == (chain, number)


def test_retry_compares_values_as_json() -> None:
    chain = chain_of((100, 1))
    with pytest.raises(TimestampConflict):
        chain.put(100, True, "n1")
    keyed = chain_of((100, {"a": 1, "b": 2}))
    assert keyed.put(100, {"b": 2, "a": 1}, "n1")[1] == 1


def test_gc_keeps_the_newest_version_at_or_below_the_horizon() -> None:
    chain = chain_of((100, "a"), (200, "b"), (300, "c"), (400, "d"))
    collected, removed = chain.collect(350)
    assert removed == 2
    assert [v.timestamp for v in collected.versions] == [300, 400]
    assert (collected.floor, collected.dropped) == (200, 2)
    assert collected.read(350) == (Version(300, "c", "n1"), 3)
    assert collected.read(300) == (Version(300, "c", "n1"), 3)
    assert collected.read(299) is None


def test_gc_at_a_version_timestamp_keeps_that_version() -> None:
    chain = chain_of((100, "a"), (200, "b"), (300, "c"))
    collected, removed = chain.collect(200)
    assert removed == 1
    assert collected.read(200) == (Version(200, "b", "n1"), 2)


def test_gc_below_everything_or_of_one_version_removes_nothing() -> None:
    chain = chain_of((100, "a"), (200, "b"))
    assert chain.collect(99) == (chain, 0)
    assert chain.collect(150) == (chain, 0)
    assert chain_of((100, "a")).collect(10**9) == (chain_of((100, "a")), 0)


def test_numbers_stay_stable_across_gc_and_later_puts() -> None:
    chain = chain_of((100, "a"), (200, "b"), (300, "c"))
    chain, _ = chain.collect(250)
    chain, _ = chain.collect(300)
    assert chain.dropped == 2
    chain, number = chain.put(400, "d", "n1")
    assert number == 4
    assert chain.read(None)[1] == 4
    with pytest.raises(TimestampConflict):
        chain.put(150, "late", "n1")


@given(chain=version_chains(), horizon=st.integers(0, 40))
def test_gc_changes_no_read_at_or_above_the_horizon(chain, horizon) -> None:
    collected, removed = chain.collect(horizon)
    assert len(collected.versions) == len(chain.versions) - removed
    for at in range(horizon, 45):
        assert collected.read(at) == chain.read(at)


def test_merge_resolves_a_timestamp_by_higher_origin() -> None:
    left = chain_of((100, "zzz"), origin="n1")
    right = chain_of((100, "aaa"), origin="n2")
    assert left.merge(right).versions == (Version(100, "aaa", "n2"),)
    assert right.merge(left).versions == (Version(100, "aaa", "n2"),)


def test_merge_resolves_one_origin_by_canonical_value() -> None:
    left = chain_of((100, "a"))
    right = chain_of((100, "b"))
    assert left.merge(right).versions == (Version(100, "b", "n1"),)
    assert right.merge(left).versions == (Version(100, "b", "n1"),)


def test_merge_takes_the_collected_side_floor() -> None:
    full = chain_of((100, "a"), (200, "b"), (300, "c"))
    collected, _ = full.collect(250)
    merged = full.merge(collected)
    assert merged == collected
    assert merged.read(None) == (Version(300, "c", "n1"), 3)
    ahead, _ = collected.put(400, "d", "n1")
    assert full.merge(ahead).versions == (Version(200, "b", "n1"), *ahead.versions[1:])


def test_merge_takes_dropped_from_the_side_with_the_higher_floor() -> None:
    ahead, _ = chain_of((100, "a"), (200, "b")).collect(200)
    behind, _ = chain_of((50, "w"), (60, "x"), (70, "y"), (80, "z")).collect(80)
    assert (ahead.floor, ahead.dropped, behind.floor, behind.dropped) == (100, 1, 70, 3)
    for merged in (ahead.merge(behind), behind.merge(ahead)):
        assert merged == ahead


def test_merge_with_equal_floors_keeps_the_larger_dropped() -> None:
    left = VersionChain((Version(10, "a", "n1"),), floor=5, dropped=2)
    right = VersionChain((Version(10, "a", "n1"),), floor=5, dropped=4)
    assert left.merge(right) == right
    assert right.merge(left) == right


@given(chain=version_chains())
def test_reachable_chains_hold_their_invariants(chain) -> None:
    stamps = [v.timestamp for v in chain.versions]
    assert stamps == sorted(set(stamps))
    assert all(ts > chain.floor for ts in stamps)
    assert (chain.floor == -1) == (chain.dropped == 0)
    assert chain.floor == -1 or chain.versions


@given(chain=version_chains())
def test_wire_round_trip(chain) -> None:
    assert VersionChain.from_wire(chain.to_wire()) == chain


def test_to_wire_shape() -> None:
    chain, _ = chain_of((100, "a"), (200, "b")).collect(200)
    assert chain.to_wire() == {"versions": [[200, "b", "n1"]], "floor": 100, "dropped": 1}


def test_from_wire_normalises_order_and_duplicates() -> None:
    raw = {
        "versions": [[200, "b", "n1"], [100, "x", "n1"], [100, "y", "n2"]],
        "floor": -1,
        "dropped": 0,
    }
    assert VersionChain.from_wire(raw).to_wire()["versions"] == [[100, "y", "n2"], [200, "b", "n1"]]


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        {"floor": -1, "dropped": 0},
        {"versions": {}, "floor": -1, "dropped": 0},
        {"versions": [], "dropped": 0},
        {"versions": [], "floor": -1},
        {"versions": [], "floor": -2, "dropped": 0},
        {"versions": [], "floor": True, "dropped": 0},
        {"versions": [], "floor": -1, "dropped": -1},
        {"versions": [[1, "a", "n1"]], "floor": 0, "dropped": 0},
        {"versions": [[1, "a", "n1"]], "floor": -1, "dropped": 1},
        {"versions": [], "floor": 5, "dropped": 1},
        {"versions": [[5, "a", "n1"]], "floor": 5, "dropped": 1},
        {"versions": [[1, "a"]], "floor": -1, "dropped": 0},
        {"versions": [[-1, "a", "n1"]], "floor": -1, "dropped": 0},
        {"versions": [[1.5, "a", "n1"]], "floor": -1, "dropped": 0},
        {"versions": [[1, "a", 7]], "floor": -1, "dropped": 0},
        {"versions": [{"timestamp": 1}], "floor": -1, "dropped": 0},
    ],
)
def test_from_wire_rejects(raw) -> None:
    with pytest.raises(Malformed):
        VersionChain.from_wire(raw)


@given(value=json_values)
def test_put_above_newest_always_succeeds(value) -> None:
    chain = chain_of((100, "a"))
    updated, number = chain.put(101, value, "n9")
    assert number == 2
    assert updated.read(None) == (Version(101, value, "n9"), 2)


# -- deletes ----------------------------------------------------------------------------------


def test_a_tombstone_version_hides_the_key_from_its_timestamp_on() -> None:
    chain, _ = VersionChain().put(100, "v1", "n1")
    chain, number = chain.put(200, None, "n2", deleted=True)
    assert number == 2
    assert chain.read(150) == (Version(100, "v1", "n1"), 1)
    found = chain.read(250)
    assert found is not None and found[0].deleted
    assert chain.put(200, None, "n3", deleted=True) == (chain, 2)  # a retry
    with pytest.raises(TimestampConflict):
        chain.put(200, None, "n2")  # a value where the tombstone is
    with pytest.raises(TimestampConflict):
        chain.put(150, None, "n2", deleted=True)


def test_collection_keeps_a_tombstone_as_the_newest_version_below_the_horizon() -> None:
    chain, _ = VersionChain().put(100, "v1", "n1")
    chain, _ = chain.put(200, None, "n2", deleted=True)
    collected, removed = chain.collect(300)
    assert removed == 1
    assert [v.deleted for v in collected.versions] == [True]
    assert collected.merge(chain) == chain.merge(collected) == collected


def test_a_tombstone_version_round_trips_and_old_chains_still_load() -> None:
    chain, _ = VersionChain().put(100, "v1", "n1")
    chain, _ = chain.put(200, None, "n2", deleted=True)
    wire = chain.to_wire()
    assert wire["versions"] == [[100, "v1", "n1"], [200, None, "n2", True]]
    assert VersionChain.from_wire(wire) == VersionChain.from_stored(wire) == chain
    for bad in ([200, None, "n2", False], [200, None, "n2", True, 1]):
        with pytest.raises(Malformed):
            VersionChain.from_wire({**wire, "versions": [bad]})
