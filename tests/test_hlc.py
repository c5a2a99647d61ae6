"""Hybrid logical clock: monotonic issue, tracking the wall clock, overflow."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.crdt.hlc import LOGICAL_BITS, TICK_HEADROOM, HybridLogicalClock, physical_ms
from replica.crdt.malformed import MAX_INT

NOW = 1_700_000_000_000


def test_first_tick_follows_the_wall_clock() -> None:
    clock, ts = HybridLogicalClock().tick(NOW)
    assert ts == NOW << LOGICAL_BITS
    assert physical_ms(ts) == NOW
    assert clock.last == ts


def test_ticks_in_one_millisecond_count_up() -> None:
    clock, first = HybridLogicalClock().tick(NOW)
    clock, second = clock.tick(NOW)
    assert second == first + 1
    assert physical_ms(second) == NOW


def test_wall_clock_going_backwards_does_not() -> None:
    clock, first = HybridLogicalClock().tick(NOW)
    _, second = clock.tick(NOW - 5_000)
    assert second == first + 1


def test_observed_timestamp_from_the_future_is_passed() -> None:
    ahead = (NOW + 10_000) << LOGICAL_BITS
    clock = HybridLogicalClock().observe(ahead)
    _, ts = clock.tick(NOW)
    assert ts == ahead + 1


def test_small_client_timestamps_share_the_domain() -> None:
    clock = HybridLogicalClock().observe(200)
    _, ts = clock.tick(0)
    assert ts == 201


def test_observing_an_older_timestamp_changes_nothing() -> None:
    clock = HybridLogicalClock(500)
    assert clock.observe(100) is clock
    assert clock.observe(501) == HybridLogicalClock(501)


def test_overflow_is_an_error_not_a_wrap() -> None:
    with pytest.raises(OverflowError):
        HybridLogicalClock().observe(MAX_INT).tick(0)
    with pytest.raises(OverflowError):
        HybridLogicalClock().tick((MAX_INT >> LOGICAL_BITS) + 1)
    _, ts = HybridLogicalClock(MAX_INT - 1).tick(0)
    assert ts == MAX_INT


def test_issued_moves_only_by_ticks() -> None:
    clock = HybridLogicalClock().observe((NOW + 10) << LOGICAL_BITS)
    assert clock.issued == 0
    clock, ts = clock.tick(NOW)
    assert clock.issued == ts == ((NOW + 10) << LOGICAL_BITS) + 1
    assert clock.observe(ts + 100).issued == ts


def test_the_bound_follows_the_wall_clock_not_what_was_accepted() -> None:
    skew = 60_000
    clock = HybridLogicalClock()
    bound = clock.bound(NOW, skew)
    assert bound == (NOW + skew) << LOGICAL_BITS
    clock = clock.observe(bound)  # a client wrote right at the bound
    assert clock.bound(NOW, skew) == bound  # which lets the next one go no further
    _, issued = clock.tick(NOW)
    assert HybridLogicalClock(issued, issued).bound(NOW, skew) == issued  # still valid
    assert clock.bound(NOW + 1, skew) == bound + (1 << LOGICAL_BITS)


def test_no_skew_is_large_enough_to_let_a_tick_overflow() -> None:
    clock = HybridLogicalClock()
    bound = clock.bound(NOW, MAX_INT)
    assert bound == MAX_INT - TICK_HEADROOM
    _, ts = clock.observe(bound).tick(NOW)
    assert ts == bound + 1


events = st.lists(
    st.one_of(
        st.tuples(st.just("observe"), st.integers(0, 1 << 50)),
        st.tuples(st.just("tick"), st.integers(0, 1 << 34)),
    ),
    max_size=30,
)


@given(events)
def test_a_tick_exceeds_everything_seen_or_issued(sequence) -> None:
    clock = HybridLogicalClock()
    highest = 0
    for kind, number in sequence:
        if kind == "observe":
            clock = clock.observe(number)
            highest = max(highest, number)
        else:
            clock, ts = clock.tick(number)
            assert ts > highest
            assert ts >= number << LOGICAL_BITS
            highest = ts
        assert clock.last == highest
