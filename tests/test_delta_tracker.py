"""Delta selection: what each peer is sent, resent and finally spared."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from replica.replication.delta_tracker import DeltaTracker

A = ("mv", "a")
B = ("mv", "b")


def test_a_change_is_pending_for_every_peer_until_each_acknowledges() -> None:
    tracker = DeltaTracker(["n2", "n3"])
    tracker.changed(A)
    items = tracker.take("n2", now=0.0, limit=10)
    assert [ref for ref, _ in items] == [A]
    tracker.sent("n2", 7, items, now=0.0)
    assert tracker.acked("n2", 7) == 1
    assert tracker.pending("n2") == 0
    assert tracker.pending("n3") == 1


def test_keys_in_flight_are_not_taken_twice_until_the_message_expires() -> None:
    tracker = DeltaTracker(["n2"], resend_after=2.0)
    tracker.changed(A)
    tracker.sent("n2", 1, tracker.take("n2", now=0.0, limit=10), now=0.0)
    assert tracker.take("n2", now=1.0, limit=10) == []
    assert [ref for ref, _ in tracker.take("n2", now=2.5, limit=10)] == [A]


def test_a_change_after_sending_survives_the_acknowledgement() -> None:
    tracker = DeltaTracker(["n2"])
    tracker.changed(A)
    tracker.sent("n2", 1, tracker.take("n2", now=0.0, limit=10), now=0.0)
    tracker.changed(A)
    tracker.acked("n2", 1)
    assert tracker.pending("n2") == 1
    assert [ref for ref, _ in tracker.take("n2", now=0.1, limit=10)] == [A]


def test_take_respects_the_limit_and_unknown_acks_are_ignored() -> None:
    tracker = DeltaTracker(["n2"])
    for i in range(5):
        tracker.changed(("kv", str(i)))
    assert len(tracker.take("n2", now=0.0, limit=3)) == 3
    assert tracker.acked("n2", 99) == 0
    assert tracker.acked("n9", 1) == 0


def test_a_dropped_connection_makes_everything_in_flight_eligible_again() -> None:
    tracker = DeltaTracker(["n2"], resend_after=60.0)
    tracker.changed(A)
    tracker.changed(B)
    tracker.sent("n2", 1, tracker.take("n2", now=0.0, limit=10), now=0.0)
    tracker.forget_in_flight("n2")
    assert {ref for ref, _ in tracker.take("n2", now=0.1, limit=10)} == {A, B}


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("change"), st.integers(0, 20)),
            st.tuples(st.just("send"), st.integers(1, 5)),
            st.tuples(st.just("ack"), st.integers(0, 30)),
        ),
        max_size=80,
    )
)
def test_memory_is_bounded_by_distinct_keys_and_acks_leave_nothing_behind(ops) -> None:
    tracker = DeltaTracker(["n2"], resend_after=1e9)
    msg_id = 0
    keys: set[tuple[str, str]] = set()
    for op, arg in ops:
        if op == "change":
            keys.add(("mv", str(arg)))
            tracker.changed(("mv", str(arg)))
        elif op == "send":
            items = tracker.take("n2", now=0.0, limit=arg)
            if items:
                tracker.sent("n2", msg_id, items, now=0.0)
                msg_id += 1
        else:
            tracker.acked("n2", arg)
        assert tracker.pending("n2") <= len(keys)
    # deliver everything still owed, in order: nothing stays pending
    for _ in range(len(keys) + 1):
        tracker.forget_in_flight("n2")
        items = tracker.take("n2", now=0.0, limit=1000)
        if not items:
            break
        tracker.sent("n2", msg_id, items, now=0.0)
        tracker.acked("n2", msg_id)
        msg_id += 1
    assert tracker.pending("n2") == 0


def test_marking_a_key_already_in_flight_does_not_force_a_resend() -> None:
    tracker = DeltaTracker(["n2"])
    tracker.changed(A)
    tracker.sent("n2", 1, tracker.take("n2", now=0.0, limit=10), now=0.0)
    tracker.mark("n2", A)
    assert tracker.acked("n2", 1) == 1
    assert tracker.pending("n2") == 0
    tracker.mark("n2", B)
    assert [ref for ref, _ in tracker.take("n2", now=0.0, limit=10)] == [B]


def test_pending_past_the_bound_is_dropped_to_a_repair_for_that_peer_alone() -> None:
    tracker = DeltaTracker(["n2", "n3"], max_pending=3)
    tracker.changed(A)
    tracker.sent("n3", 1, tracker.take("n3", now=0.0, limit=10), now=0.0)
    tracker.acked("n3", 1)
    for i in range(3):
        tracker.changed(("kv", str(i)))
    assert tracker.pending("n2") == 0  # four keys for n2: over the bound, dropped
    assert tracker.dropped("n2") == 4 and tracker.needs_repair("n2")
    assert tracker.pending("n3") == 3 and not tracker.needs_repair("n3")
    tracker.changed(B)  # what changes afterwards is pending again, up to the bound
    assert [ref for ref, _ in tracker.take("n2", now=0.0, limit=10)] == [B]
    tracker.repair_started("n2")
    assert not tracker.needs_repair("n2") and tracker.dropped("n2") == 4


def test_a_repair_marks_up_to_the_bound_and_leaves_the_rest_to_its_next_round() -> None:
    tracker = DeltaTracker(["n2"], max_pending=2)
    for key in "xyz":
        tracker.mark("n2", ("kv", key))
    assert tracker.pending("n2") == 2 and tracker.dropped("n2") == 0
    assert tracker.needs_repair("n2")


def test_requeued_messages_are_bounded_too() -> None:
    tracker = DeltaTracker(["n2"], max_pending=2, resend_after=1.0)
    tracker.changed(A)
    tracker.changed(B)
    tracker.sent("n2", 1, tracker.take("n2", now=0.0, limit=10), now=0.0)
    tracker.mark("n2", ("kv", "x"))
    tracker.mark("n2", ("kv", "y"))
    assert tracker.pending("n2") == 4 and not tracker.needs_repair("n2")
    tracker.take("n2", now=5.0, limit=10)  # the message expires: A and B wait again
    assert tracker.needs_repair("n2") and tracker.dropped("n2") == 4
    assert tracker.pending("n2") == 0


@settings(max_examples=100)
@given(st.lists(st.integers(0, 50), max_size=200), st.integers(1, 20))
def test_pending_never_exceeds_the_bound(changes: list[int], bound: int) -> None:
    tracker = DeltaTracker(["n2"], max_pending=bound)
    for key in changes:
        tracker.changed(("mv", str(key)))
        assert tracker.pending("n2") <= bound
    distinct = len({str(k) for k in changes})
    assert tracker.dropped("n2") <= len(changes)
    assert tracker.needs_repair("n2") == (distinct > bound)
