"""MV registers: the merge laws, a causal-history oracle, and the wire forms.

The oracle is the specification the dotted version vectors approximate with
counters: every write is an event that remembers the set of events it had
seen, a replica knows a set of events, and a value is visible exactly when no
other known event had seen it.  A delete is an event too, with no value: what
it had seen (its context) is hidden wherever it is known, so a deleted value
never comes back, and a write it had not seen stays visible.  The register
must agree with it after every step of any program, not just once replicas
have converged.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.crdt.malformed import Malformed
from replica.crdt.mv_register import MVRegister, Sibling
from replica.crdt.mv_sibling import NO_PAST
from replica.crdt.version_vector import Dot, covers, join_all
from tests.strategies_mv import (
    REPLICAS,
    Cluster,
    Delete,
    Merge,
    Read,
    Reply,
    Step,
    Write,
    descends,
    mv_programs,
    mv_registers,
    snapshots,
    write_value,
)


def assert_invariants(register: MVRegister) -> None:
    dots = [s.dot for s in register.siblings]
    assert dots == sorted(dots), "siblings sorted by dot"
    assert len(set(dots)) == len(dots), "no two siblings share a dot"
    for x in register.siblings:
        assert not covers(x.past, x.dot), f"{x} is inside its own past"
        for y in register.siblings:
            assert y is x or not covers(y.past, x.dot), f"{x} is obsolete by {y}"
        assert not covers(register.deleted, x.dot), f"{x} is deleted"
    for node, counter in register.deleted.items():
        assert counter > 0
        redundant = [s for s in register.siblings if s.past.get(node, 0) >= counter]
        assert not redundant, f"deleted entry {node}:{counter} is inside {redundant}"


# -- the merge laws ----------------------------------------------------------------------


@given(a=mv_registers())
def test_reachable_states_keep_the_invariants(a: MVRegister) -> None:
    assert_invariants(a)


@given(a=mv_registers(universe=None))
def test_merge_idempotent(a: MVRegister) -> None:
    assert a.merge(a) == a
    assert a.merge(MVRegister.from_wire(a.to_wire())) == a


@given(a=mv_registers(), b=mv_registers())
def test_merge_commutative(a: MVRegister, b: MVRegister) -> None:
    assert a.merge(b) == b.merge(a)


@given(a=mv_registers(universe=None), b=mv_registers(universe=None))
def test_merge_commutative_even_across_unrelated_clusters(a: MVRegister, b: MVRegister) -> None:
    # unrelated programs reuse dots with other values and pasts: the tie-break must be symmetric
    assert a.merge(b) == b.merge(a)
    assert_invariants(a.merge(b))


@given(a=mv_registers(), b=mv_registers(), c=mv_registers())
def test_merge_associative(a: MVRegister, b: MVRegister, c: MVRegister) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(a=mv_registers(), b=mv_registers())
def test_merge_is_an_upper_bound(a: MVRegister, b: MVRegister) -> None:
    merged = a.merge(b)
    assert_invariants(merged)
    assert merged.merge(a) == merged
    assert merged.merge(b) == merged
    assert descends(merged.context(), a.context())
    assert descends(merged.context(), b.context())


@given(a=mv_registers())
def test_a_register_reads_as_the_sequence_of_its_siblings(a: MVRegister) -> None:
    assert len(a) == len(a.siblings)
    assert tuple(a) == a.siblings
    assert [a[i] for i in range(len(a))] == list(a.siblings)
    assert bool(a) == bool(a.siblings)
    assert hash(a) == hash(MVRegister(a.siblings, a.deleted))
    assert a == MVRegister(a.siblings, dict(a.deleted))
    assert not MVRegister() and MVRegister() == MVRegister.of([])


@given(a=mv_registers())
def test_merge_with_an_equal_register_returns_it_unchanged(a: MVRegister) -> None:
    assert a.merge(a) is a
    assert a.merge(MVRegister.from_wire(a.to_wire())) is a
    assert a.merge(MVRegister()) is a
    assert MVRegister().merge(a) == a


@settings(max_examples=150)
@given(data=st.data())
def test_replicas_converge_in_any_exchange_order(data: st.DataObject) -> None:
    size = data.draw(st.integers(3, 5), label="replicas")
    cluster = Cluster(size)
    for step in data.draw(mv_programs(size, min_steps=5, max_steps=25), label="program"):
        cluster.apply(step)
    before = list(cluster.states)
    states = cluster.states
    heard = [{i} for i in range(size)]
    pairs = [(s, t) for s in range(size) for t in range(size) if s != t]
    order = data.draw(st.lists(st.sampled_from(pairs), max_size=10), label="gossip")
    order += data.draw(st.permutations(pairs), label="exchange order")
    for source, target in itertools.chain(order, itertools.cycle(order[-len(pairs) :])):
        if all(len(h) == size for h in heard):
            break
        states[target] = states[target].merge(states[source])
        heard[target] |= heard[source]
    assert all(state == states[0] for state in states)
    assert states[0] == reduce(MVRegister.merge, before)
    deleted = join_all(state.deleted for state in before)
    assert states[0] == MVRegister.of((s for state in before for s in state.siblings), deleted)


# -- the causal-history oracle -------------------------------------------------------------


@dataclass(frozen=True)
class Deletion:
    """A delete event of the oracle: it has no value, only what it had seen."""

    number: int


@dataclass(frozen=True)
class OracleReply:
    values: frozenset[Any]
    context: frozenset[Any]
    """Every event the replica's history holds: what a write or delete with this reply has seen."""


@dataclass
class Oracle:
    """Replicas that know sets of events; each event remembers every event it had seen."""

    size: int
    known: list[frozenset[Any]] = field(default_factory=list)
    seen_by: dict[Any, frozenset[Any]] = field(default_factory=dict)
    replies: list[OracleReply] = field(default_factory=list)
    writes: int = 0
    deletes: int = 0

    def __post_init__(self) -> None:
        self.known = [frozenset()] * self.size

    def visible(self, replica: int) -> frozenset[Any]:
        known = self.known[replica]
        hidden = frozenset().union(*(self.seen_by[e] for e in known))
        return frozenset(e for e in known - hidden if not isinstance(e, Deletion))

    def history(self, events: frozenset[Any]) -> frozenset[Any]:
        """The events and everything they had seen (each `seen_by` is already closed)."""
        return events.union(*(self.seen_by[e] for e in events))

    def apply(self, step: Step) -> None:
        if isinstance(step, Merge):
            self.known[step.target] |= self.known[step.source]
            return
        r = step.replica
        here = self.history(self.known[r])
        if isinstance(step, Write):
            event: Any = write_value(self.writes)
            self.writes += 1
            if step.context == "empty":
                seen: frozenset[Any] = frozenset()
            elif step.context == "reply" and self.replies:
                seen = self.replies[step.reply % len(self.replies)].context
            else:
                seen = here
            self.seen_by[event] = seen
            self.known[r] |= {event}
        elif isinstance(step, Delete):
            event = Deletion(self.deletes)
            self.deletes += 1
            if step.here or not self.replies:
                self.seen_by[event] = here
            else:
                self.seen_by[event] = self.replies[step.reply % len(self.replies)].context
            self.known[r] |= {event}
        self.replies.append(OracleReply(self.visible(r), self.history(self.known[r])))


@settings(max_examples=300, deadline=None)
@given(size=st.integers(3, 4), data=st.data())
def test_visible_values_match_the_causal_history_oracle(size: int, data: st.DataObject) -> None:
    cluster, oracle = Cluster(size), Oracle(size)
    for step in data.draw(mv_programs(size, min_steps=10, max_steps=40), label="program"):
        cluster.apply(step)
        oracle.apply(step)
        for r in range(size):
            assert set(cluster.states[r].values()) == oracle.visible(r), (step, r)
        if not isinstance(step, Merge):
            assert set(cluster.replies[-1].values) == oracle.replies[-1].values


def test_oracle_and_register_agree_on_a_hand_checked_program() -> None:
    cluster, oracle = Cluster(3), Oracle(3)
    program = [
        Write(0),  # 0 at n1
        Write(1),  # "w1" at n2
        Write(0, "reply", 0),  # 2 at n1, having seen 0
        Merge(0, 1),
        Read(0),  # reply 3: 2 and "w1"
        Write(2, "empty"),  # "w3" at n3, having seen nothing
        Merge(2, 0),
        Write(2, "reply", 3),  # 4 at n3, having seen 2 and "w1" (and so 0) but not "w3"
    ]
    for step in program:
        cluster.apply(step)
        oracle.apply(step)
    expected = [{2, "w1"}, {"w1"}, {"w3", 4}]
    assert [oracle.visible(r) for r in range(3)] == expected
    assert [set(state.values()) for state in cluster.states] == expected
    assert oracle.replies[3].values == {2, "w1"}


# -- contexts: what a write supersedes ---------------------------------------------------


def test_write_without_context_replaces_every_local_value() -> None:
    r, _ = MVRegister().write("n1", "a", None)
    r = r.merge(MVRegister().write("n2", "b", None)[0])
    assert r.values() == ["a", "b"]
    r, new = r.write("n1", "c", None)
    assert r.values() == ["c"]
    assert new == Sibling.at("c", Dot("n1", 2), {"n1": 1, "n2": 1})


def test_write_with_empty_context_keeps_every_local_value() -> None:
    r, _ = MVRegister().write("n1", "a", None)
    r, new = r.write("n1", "b", {})
    assert r.values() == ["a", "b"]
    assert new.dot == Dot("n1", 2)
    assert new.past == {}


def test_write_with_a_reads_context_supersedes_exactly_what_the_read_returned() -> None:
    n1, _ = MVRegister().write("n1", "a", None)
    n2, _ = MVRegister().write("n2", "b", None)
    n1 = n1.merge(n2)
    read_values, read_context = n1.values(), n1.context()
    assert read_values == ["a", "b"]
    # after the read: a concurrent write arrives by merge, and a local one with no history
    n3, _ = MVRegister().write("n3", "c", None)
    n1 = n1.merge(n3)
    n1, _ = n1.write("n1", "d", {})
    assert n1.values() == ["a", "d", "b", "c"]
    n1, new = n1.write("n1", "e", read_context)
    assert n1.values() == ["d", "e", "c"]
    assert new.past == read_context


@settings(max_examples=200)
@given(data=st.data())
def test_write_with_a_reply_context_supersedes_its_values_and_nothing_else(
    data: st.DataObject,
) -> None:
    cluster = Cluster(3)
    for step in data.draw(mv_programs(3, min_steps=4, max_steps=20), label="before the read"):
        cluster.apply(step)
    replica = data.draw(st.integers(0, 2), label="replica")
    cluster.apply(Read(replica))
    read = len(cluster.replies) - 1
    for step in data.draw(mv_programs(3, max_steps=10), label="after the read"):
        cluster.apply(step)
    before = set(cluster.states[replica].values())
    cluster.apply(Write(replica, "reply", read))
    after = set(cluster.states[replica].values())
    new = write_value(cluster.writes - 1)
    assert after == (before - set(cluster.replies[read].values)) | {new}


def test_write_counter_stays_above_a_context_that_claims_more() -> None:
    # a context naming n1 events this replica never had must not swallow the new write
    r, new = MVRegister().write("n1", "a", {"n1": 5, "n2": 1})
    assert new.dot == Dot("n1", 6)
    assert not covers(new.past, new.dot)
    assert r.values() == ["a"]
    assert new.vclock() == {"n1": 6, "n2": 1}


def test_write_does_not_keep_a_reference_to_the_callers_context() -> None:
    context = {"n2": 1}
    r, new = MVRegister().write("n1", "a", context)
    context["n2"] = 9
    assert new.past == {"n2": 1}
    assert r.context() == {"n1": 1, "n2": 1}


def test_context_joins_every_siblings_past_and_dot() -> None:
    assert MVRegister().context() == {}
    r = MVRegister.of(
        [
            Sibling.at("a", Dot("n1", 3), {"n2": 4}),
            Sibling.at("b", Dot("n2", 5), {"n1": 1, "n3": 2}),
        ]
    )
    assert r.context() == {"n1": 3, "n2": 5, "n3": 2}


# -- the dot floor ---------------------------------------------------------------------------


@given(
    a=mv_registers(),
    node=st.sampled_from(REPLICAS),
    kind=st.sampled_from(["none", "empty", "local"]),
    floor=st.integers(0, 40),
)
def test_a_write_above_a_floor_issues_a_counter_above_it_and_keeps_the_invariants(
    a: MVRegister, node: str, kind: str, floor: int
) -> None:
    context = {"none": None, "empty": {}, "local": a.context()}[kind]
    register, new = a.write(node, "x", context, floor)
    assert new.node == node and new.counter > floor
    assert new.counter > a.context().get(node, 0)
    assert new in register.siblings
    assert_invariants(register)
    assert_invariants(register.merge(a))
    if floor <= max(a.context().get(node, 0), (context or {}).get(node, 0)):
        assert (register, new) == a.write(node, "x", context)  # a floor below changes nothing


@given(program=mv_programs(max_steps=40))
def test_a_replica_that_collects_its_tombstones_and_raises_its_floor_never_reissues_a_dot(
    program: list[Step],
) -> None:
    """A collection forgets the deleted history; the floor keeps what it said of the own node.

    Each replica collects a tombstone as soon as it holds one, the most often it could.
    """
    cluster = Cluster()
    floors = [0] * cluster.size
    issued: set[Dot] = set()
    for i, step in enumerate(program):
        if isinstance(step, Write):
            node = f"n{step.replica + 1}"
            context = cluster.context_for(step)
            register, new = cluster.states[step.replica].write(
                node, i, context, floors[step.replica]
            )
            assert new.dot not in issued
            issued.add(new.dot)
            cluster.states[step.replica] = register
            cluster.replies.append(Reply(tuple(register.values()), register.context()))
        else:
            cluster.apply(step)
        for replica, state in enumerate(cluster.states):
            if state.deleted and not state.siblings:
                own = state.deleted.get(f"n{replica + 1}", 0)
                floors[replica] = max(floors[replica], own)
                cluster.states[replica] = MVRegister()


def test_a_stale_context_from_before_a_collection_does_not_supersede_a_later_write() -> None:
    a, _ = MVRegister().write("n1", "a", None)
    a, _ = a.write("n1", "b", None)
    a, _ = a.write("n1", "c", None)
    stale = a.context()  # {n1: 3}, held by a client
    gone = a.delete(a.context())
    floor = gone.deleted["n1"]  # the key is collected: the register is forgotten
    fresh, new = MVRegister().write("n1", "d", None, floor)
    assert new.dot == Dot("n1", 4)
    after, _ = fresh.write("n1", "e", stale)
    assert sorted(after.values()) == ["d", "e"]  # concurrent: "d" is not lost


# -- sibling explosion ----------------------------------------------------------------------


def test_two_clients_writing_in_turn_on_one_node_never_make_more_than_two_siblings() -> None:
    register = MVRegister()
    context: dict[str, dict[str, int] | None] = {"A": None, "B": {}}
    written: dict[str, Any] = {}
    for round_ in range(50):
        for client in ("A", "B"):
            value = f"{client}{round_}"
            register, _ = register.write("n1", value, context[client])
            context[client] = register.context()  # what mv_write_ok hands back
            written[client] = value
            assert len(register.siblings) <= 2
            assert set(register.values()) == set(written.values())
    assert len(register.siblings) == 2


@given(
    clients=st.integers(1, 4),
    turns=st.lists(st.integers(0, 3), max_size=60),
)
def test_clients_with_their_own_stale_contexts_make_at_most_one_sibling_each(
    clients: int, turns: list[int]
) -> None:
    register = MVRegister()
    contexts: dict[int, dict[str, int]] = {}
    last: dict[int, str] = {}
    for i, turn in enumerate(turns):
        client = turn % clients
        value = f"c{client}-{i}"
        register, _ = register.write("n1", value, contexts.get(client, {}))
        contexts[client] = register.context()
        last[client] = value
        # each client's newest write is there, none of its older ones, and so at
        # most one sibling per client (fewer when one client's reply saw another's)
        assert value in register.values()
        assert set(register.values()) <= set(last.values())


# -- the seed's dot-less entry --------------------------------------------------------------


def test_seed_entry_is_the_senders_write() -> None:
    sibling = Sibling.from_entry({"value": "v2", "vclock": {"n2": 1}}, "n2")
    assert sibling == Sibling.at("v2", Dot("n2", 1), {})
    local, _ = MVRegister().write("n1", "v1", None)
    merged = local.merge(MVRegister.of([sibling]))
    assert merged.values() == ["v1", "v2"]
    assert [s.to_read() for s in merged.siblings] == [
        {"value": "v1", "vclock": {"n1": 1}, "dot": ["n1", 1]},
        {"value": "v2", "vclock": {"n2": 1}, "dot": ["n2", 1]},
    ]


def test_seed_entry_past_is_the_vclock_with_the_writers_entry_lowered() -> None:
    sibling = Sibling.from_entry({"value": 1, "vclock": {"n1": 2, "n2": 3}}, "n2")
    assert sibling.dot == Dot("n2", 3)
    assert sibling.past == {"n1": 2, "n2": 2}
    assert sibling.vclock() == {"n1": 2, "n2": 3}


def test_seed_entry_that_supersedes_a_local_write() -> None:
    local, _ = MVRegister().write("n1", "v1", None)
    entry = Sibling.from_entry({"value": "v2", "vclock": {"n1": 1, "n2": 1}}, "n2")
    assert local.merge(MVRegister.of([entry])).values() == ["v2"]


@pytest.mark.parametrize("sender", [None, "n7"])
def test_seed_entry_with_one_entry_belongs_to_that_node(sender: str | None) -> None:
    sibling = Sibling.from_entry({"value": None, "vclock": {"n3": 4, "n1": 0}}, sender)
    assert sibling == Sibling.at(None, Dot("n3", 4), {"n3": 3})


@pytest.mark.parametrize(
    ("raw", "sender", "complaint"),
    [
        ({"value": 1, "vclock": {"n1": 1, "n2": 1}}, None, "cannot tell"),
        ({"value": 1, "vclock": {"n1": 1, "n2": 1}}, "n3", "cannot tell"),
        ({"value": 1, "vclock": {}}, "n1", "empty"),
        ({"value": 1, "vclock": {"n1": 0}}, "n1", "empty"),
        ({"vclock": {"n1": 1}}, "n1", "'value'"),
        ({"value": 1}, "n1", "'vclock'"),
        ({"value": 1, "vclock": {"n1": -1}}, "n1", "vclock"),
        ({"value": 1, "vclock": {"n1": True}}, "n1", "vclock"),
        ({"value": 1, "vclock": [["n1", 1]]}, "n1", "vclock"),
        (["v", {"n1": 1}], "n1", "entry"),
    ],
)
def test_seed_entry_rejects(raw: Any, sender: str | None, complaint: str) -> None:
    with pytest.raises(Malformed, match=complaint):
        Sibling.from_entry(raw, sender)


# -- wire forms ------------------------------------------------------------------------------


def good_sibling(**changes: Any) -> dict[str, Any]:
    wire = {"value": {"cart": ["a"]}, "dot": ["n1", 2], "past": {"n1": 1, "n2": 3}}
    wire.update(changes)
    return {k: v for k, v in wire.items() if v is not MISSING}


MISSING = object()


def test_sibling_wire_forms() -> None:
    sibling = Sibling.from_wire(good_sibling())
    assert sibling == Sibling.at({"cart": ["a"]}, Dot("n1", 2), {"n1": 1, "n2": 3})
    assert sibling.to_wire() == good_sibling()
    assert sibling.to_read() == {
        "value": {"cart": ["a"]},
        "vclock": {"n1": 2, "n2": 3},
        "dot": ["n1", 2],
    }
    assert Sibling.from_wire(good_sibling(value=None)).value is None
    assert Sibling.from_wire(good_sibling(past={"n2": 0})).past == {}


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"value": MISSING}, "'value'"),
        ({"dot": MISSING}, "'dot'"),
        ({"dot": ["n1", 0]}, "dot"),
        ({"dot": ["n1", -1]}, "dot"),
        ({"dot": ["n1", True]}, "dot"),
        ({"dot": ["n1", 1.0]}, "dot"),
        ({"dot": ["n1"]}, "dot"),
        ({"dot": [1, 1]}, "dot"),
        ({"dot": {"n1": 1}}, "dot"),
        ({"past": MISSING}, "'past'"),
        ({"past": {"n1": -1}}, "past"),
        ({"past": {"n1": False}}, "past"),
        ({"past": {"n1": "1"}}, "past"),
        ({"past": [["n1", 1]]}, "past"),
        ({"past": None}, "past"),
        ({"past": {"n1": 2}}, "own dot"),
    ],
)
def test_sibling_from_wire_rejects(changes: dict[str, Any], complaint: str) -> None:
    with pytest.raises(Malformed, match=complaint):
        Sibling.from_wire(good_sibling(**changes))


@pytest.mark.parametrize("raw", [None, "s", 1, ["value", "dot"]])
def test_sibling_from_wire_rejects_non_objects(raw: Any) -> None:
    with pytest.raises(Malformed, match="MV sibling"):
        Sibling.from_wire(raw)


def test_register_from_wire_rejects_non_lists_and_names_the_bad_sibling() -> None:
    with pytest.raises(Malformed, match="sibling set"):
        MVRegister.from_wire({"value": 1})
    with pytest.raises(Malformed, match=r"sibling 1: .*dot"):
        MVRegister.from_wire([good_sibling(), good_sibling(dot=["n1", 0])])


def test_register_from_wire_normalises_a_peers_set() -> None:
    raw = [
        {"value": "late", "dot": ["n2", 1], "past": {"n1": 1}},
        {"value": "gone", "dot": ["n1", 1], "past": {}},
        {"value": "late", "dot": ["n2", 1], "past": {"n1": 1}},
        {"value": "other", "dot": ["n1", 2], "past": {}},
    ]
    assert MVRegister.from_wire(raw).to_wire() == [
        {"value": "other", "dot": ["n1", 2], "past": {}},
        {"value": "late", "dot": ["n2", 1], "past": {"n1": 1}},
    ]
    assert MVRegister.from_wire([]) == MVRegister()


@given(a=mv_registers())
def test_wire_round_trip_through_json(a: MVRegister) -> None:
    assert MVRegister.from_wire(orjson.loads(orjson.dumps(a.to_wire()))) == a


# -- determinism ---------------------------------------------------------------------------


@given(a=mv_registers(), data=st.data())
def test_siblings_are_ordered_by_dot_whatever_the_input_order(
    a: MVRegister, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(a.siblings), label="order")
    normalised = MVRegister.of(shuffled, a.deleted)
    assert normalised == a
    assert normalised.values() == [s.value for s in sorted(a.siblings, key=lambda s: s.dot)]


def test_values_are_listed_by_node_then_counter() -> None:
    r = MVRegister.of(
        [
            Sibling.at("n2-first", Dot("n2", 1), {}),
            Sibling.at("n1-tenth", Dot("n1", 10), {}),
            Sibling.at("n1-second", Dot("n1", 2), {}),
        ]
    )
    assert r.values() == ["n1-second", "n1-tenth", "n2-first"]


def test_one_dot_with_two_values_resolves_the_same_way_in_either_order() -> None:
    dot = Dot("n1", 1)
    pairs = [
        (Sibling.at("a", dot, {}), Sibling.at("b", dot, {})),
        (Sibling.at(1, dot, {}), Sibling.at(True, dot, {})),
        (Sibling.at("a", dot, {"n2": 1}), Sibling.at("a", dot, {"n2": 2})),
    ]
    for x, y in pairs:
        left, right = MVRegister.of([x]), MVRegister.of([y])
        assert left != right
        assert left.merge(right) == right.merge(left)
        assert left.merge(right).siblings == (y,)


def test_json_values_that_python_calls_equal_are_different_siblings() -> None:
    dot = Dot("n1", 1)
    assert Sibling.at(1, dot, {}) != Sibling.at(True, dot, {})
    assert Sibling.at(1, dot, {}) != Sibling.at(1.0, dot, {})
    assert Sibling.at({"a": 1, "b": 2}, dot, {}) == Sibling.at({"b": 2, "a": 1}, dot, {})
    assert MVRegister.of([Sibling.at(1, dot, {})]) != MVRegister.of([Sibling.at(True, dot, {})])


def test_snapshots_cover_the_whole_program() -> None:
    # the strategy's building block: initial states, then every replica after every step
    states = snapshots([Write(0), Merge(1, 0)])
    assert [s.values() for s in states] == [[], [], [], [0], [], [], [0], [0], []]


# -- deletes ----------------------------------------------------------------------------------


def test_a_delete_removes_what_its_context_covers_and_keeps_a_concurrent_sibling() -> None:
    a, _ = MVRegister().write("n1", "a", None)
    seen = a.context()
    both = a.merge(MVRegister().write("n2", "b", None)[0])
    deleted = both.delete(seen)
    assert deleted.values() == ["b"]
    assert deleted.deleted == {"n1": 1}
    assert deleted.context() == {"n1": 1, "n2": 1}
    assert_invariants(deleted)


def test_a_deleted_sibling_does_not_come_back_from_a_peer_that_still_holds_it() -> None:
    peer, _ = MVRegister().write("n1", "a", None)
    here = MVRegister().merge(peer).delete(peer.context())
    assert here.values() == [] and here.deleted == {"n1": 1}
    assert here.merge(peer) == here
    assert peer.merge(here) == here
    assert here.read_view() == ([], {"n1": 1})


def test_a_delete_of_a_value_not_yet_here_drops_it_when_it_arrives() -> None:
    elsewhere, _ = MVRegister().write("n2", "late", None)
    here = MVRegister().delete(elsewhere.context())  # a client saw it at n2, deletes at n1
    assert here.merge(elsewhere).values() == []


def test_a_write_after_a_delete_supersedes_it_and_drops_the_tombstone() -> None:
    a, _ = MVRegister().write("n1", "a", None)
    gone = a.delete(a.context())
    again, new = gone.write("n1", "b", gone.context())
    assert new.dot == Dot("n1", 2)
    assert again.values() == ["b"] and again.deleted == {}
    assert again.deleted is NO_PAST  # the shared empty history, no dict of its own
    plain, _ = gone.write("n2", "c", None)
    assert plain.deleted == {}


def test_a_write_with_an_empty_context_after_a_delete_gets_a_dot_outside_the_deleted_history() -> (
    None
):
    a, _ = MVRegister().write("n1", "a", None)
    gone = a.delete(a.context())
    concurrent, new = gone.write("n1", "b", {})
    assert new.dot == Dot("n1", 2)  # never inside its own deleted history
    assert concurrent.values() == ["b"] and concurrent.deleted == {"n1": 1}
    assert concurrent.merge(a) == concurrent


def test_a_tombstone_travels_as_one_more_element_of_the_sibling_set() -> None:
    a, _ = MVRegister().write("n1", "a", None)
    b, _ = MVRegister().write("n2", "b", None)
    state = a.merge(b).delete(a.context())
    assert state.to_wire() == [
        {"value": "b", "dot": ["n2", 1], "past": {}},
        {"deleted": {"n1": 1}},
    ]
    assert MVRegister.from_wire(state.to_wire()) == state
    assert MVRegister.from_stored(state.to_stored()) == state
    # each part of a split state is a valid delta, whatever order they come in
    parts = [MVRegister.from_wire([entry]) for entry in state.to_wire()]
    assert parts[0].merge(parts[1]) == parts[1].merge(parts[0]) == state


@pytest.mark.parametrize(
    "wire",
    [
        [{"deleted": []}],
        [{"deleted": {"n1": -1}}],
        [{"deleted": {"n1": "1"}}],
    ],
)
def test_a_malformed_tombstone_is_refused(wire: Any) -> None:
    with pytest.raises(Malformed):
        MVRegister.from_wire(wire)


def test_registers_that_differ_only_in_their_deleted_history_are_not_equal() -> None:
    a, _ = MVRegister().write("n1", "a", {})
    b = a.merge(MVRegister().delete({"n2": 3}))
    assert tuple(a) == tuple(b)
    assert a != b
    assert (a == b) is False
    assert a.merge(b) == b


def test_a_merge_that_deletes_every_sibling_keeps_what_their_pasts_had_seen() -> None:
    """The deleted history dropped n3's entry while a kept sibling's past held it; deleting
    that sibling must not forget it, or n3's next write would reissue (n3, 1)."""
    here = MVRegister.of([Sibling(26, "n1", 4, {"n2": 4, "n1": 3, "n3": 5})], {"n2": 5})
    there = MVRegister.of([Sibling(28, "n2", 5, {"n2": 4, "n1": 2, "n3": 5})], {"n1": 4})
    for merged in (here.merge(there), there.merge(here)):
        assert merged.values() == []
        assert merged.context() == {"n1": 4, "n2": 5, "n3": 5}
        _, written = merged.write("n3", "next", merged.context())
        assert written.dot == ("n3", 6)
    deleted = here.delete({"n1": 4})
    assert deleted.values() == [] and deleted.context()["n3"] == 5
