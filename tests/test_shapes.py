"""Partition shapes and the nemesis schedule: their invariants over 1 to 9 nodes, no processes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.testing.nemesis import SLOW, plan
from replica.testing.shapes import (
    SHAPES,
    Cut,
    Link,
    between,
    describe,
    majority,
    shape_named,
)
from tests.test_structure import CORE_MAY_NOT_IMPORT, PACKAGE, all_imports

node_sets = st.integers(min_value=1, max_value=9).map(lambda n: [f"n{i}" for i in range(1, n + 1)])
seeds = st.integers(min_value=0, max_value=2**32 - 1)


def sees(nodes: list[str], links: frozenset[Link]) -> dict[str, set[str]]:
    """Each node and the nodes whose gossip reaches it (itself included)."""
    return {x: {y for y in nodes if (y, x) not in links} for x in nodes}


def symmetric(links: frozenset[Link]) -> bool:
    return all((b, a) in links for a, b in links)


@given(node_sets, seeds, st.sampled_from(sorted(SHAPES)))
def test_prop_every_shape_names_only_known_nodes_and_no_self_link(
    nodes: list[str], seed: int, name: str
) -> None:
    links = SHAPES[name](nodes, random.Random(seed))
    assert all(a in nodes and b in nodes and a != b for a, b in links), links


@given(node_sets, seeds, st.sampled_from(sorted(SHAPES)))
def test_prop_a_shape_is_a_function_of_the_seed_and_the_node_set(
    nodes: list[str], seed: int, name: str
) -> None:
    first = SHAPES[name](nodes, random.Random(seed))
    assert SHAPES[name](list(reversed(nodes)), random.Random(seed)) == first


@given(node_sets, seeds)
def test_prop_halves_cut_two_groups_apart_whose_sizes_differ_by_at_most_one(
    nodes: list[str], seed: int
) -> None:
    links = SHAPES["halves"](nodes, random.Random(seed))
    assert symmetric(links)
    visible = sees(nodes, links)
    groups = {frozenset(v) for v in visible.values()}
    assert len(groups) == min(2, len(nodes)), groups
    sizes = sorted(len(g) for g in groups)
    assert sizes[-1] - sizes[0] <= 1
    assert links == between(groups)


@given(node_sets, seeds)
def test_prop_random_node_isolates_exactly_one_node(nodes: list[str], seed: int) -> None:
    links = SHAPES["random_node"](nodes, random.Random(seed))
    assert symmetric(links)
    if len(nodes) == 1:
        assert links == frozenset()
        return
    alone = [x for x, v in sees(nodes, links).items() if v == {x}]
    assert len(alone) == (2 if len(nodes) == 2 else 1), alone  # of two, each is alone
    assert links == between([alone[:1], [n for n in nodes if n != alone[0]]])


@given(node_sets, seeds)
def test_prop_majorities_ring_every_node_sees_a_majority_and_no_two_the_same(
    nodes: list[str], seed: int
) -> None:
    links = SHAPES["majorities_ring"](nodes, random.Random(seed))
    visible = sees(nodes, links)
    assert all(len(v) == majority(len(nodes)) for v in visible.values()), visible
    if len(nodes) >= 3:
        assert len({frozenset(v) for v in visible.values()}) == len(nodes), visible
    if majority(len(nodes)) % 2 == 1:
        assert symmetric(links)


def test_majorities_ring_of_three_takes_exactly_one_other_from_each_node() -> None:
    nodes = ["n1", "n2", "n3"]
    for seed in range(20):
        links = SHAPES["majorities_ring"](nodes, random.Random(seed))
        assert sorted(len(v) for v in sees(nodes, links).values()) == [2, 2, 2]
        assert sorted(a for a, _ in links) == nodes  # each node's gossip lost by one other


@given(node_sets, seeds)
def test_prop_bridge_one_node_reaches_all_and_the_two_sides_never_meet(
    nodes: list[str], seed: int
) -> None:
    links = SHAPES["bridge"](nodes, random.Random(seed))
    assert symmetric(links)
    if len(nodes) < 3:
        assert links == frozenset()
        return
    untouched = [x for x in nodes if not any(x in link for link in links)]
    assert len(untouched) == 1, untouched
    sides = {frozenset(v) - set(untouched) for v in sees(nodes, links).values()}
    sides.discard(frozenset(nodes) - set(untouched))  # the bridge sees everyone
    assert len(sides) == 2, sides
    small, large = sorted(sides, key=len)
    assert abs(len(small) + 1 - len(large)) <= 1  # halves, once the bridge joins the smaller
    assert links == between(sides)


@given(node_sets, seeds)
def test_prop_one_way_cuts_a_single_direction(nodes: list[str], seed: int) -> None:
    links = SHAPES["one_way"](nodes, random.Random(seed))
    assert len(links) == (0 if len(nodes) < 2 else 1)
    assert not any((b, a) in links for a, b in links)


def test_shapes_print_as_the_links_they_cut() -> None:
    assert describe({("n1", "n2"), ("n2", "n1"), ("n3", "n1")}) == "n1 x n2, n3 -> n1"
    assert describe(()) == "nothing"
    assert str(Cut("bridge", frozenset({("n1", "n3"), ("n3", "n1")}))) == "bridge: cut n1 x n3"
    with pytest.raises(ValueError, match="halves"):
        shape_named("thirds")


# -- the nemesis schedule ----------------------------------------------------------------


@given(seeds, node_sets)
def test_prop_a_nemesis_schedule_is_a_function_of_its_seed_and_alternates_fault_and_heal(
    seed: int, nodes: list[str]
) -> None:
    steps = plan(seed, nodes, interval=0.5, duration=4.0, latency_ms=50)
    assert steps == plan(seed, list(reversed(nodes)), interval=0.5, duration=4.0, latency_ms=50)
    assert [s.at for s in steps] == [0.5 * i for i in range(len(steps))]
    assert [s.fault is None for s in steps] == [i % 2 == 1 for i in range(len(steps))]
    assert len(steps) == 8 and steps[-1].fault is None  # it always ends healed
    for step in steps:
        if step.fault == SLOW:
            assert step.links == frozenset() and step.latency_ms == 50
        elif step.fault is not None:
            assert step.fault in SHAPES and step.latency_ms == 0
            assert all(a in nodes and b in nodes for a, b in step.links)


def test_different_seeds_give_different_schedules_and_bad_settings_are_refused() -> None:
    nodes = [f"n{i}" for i in range(1, 6)]
    schedules = {tuple(plan(seed, nodes, duration=20.0)) for seed in range(10)}
    assert len(schedules) > 1
    with pytest.raises(ValueError, match="no shape"):
        plan(1, nodes, shapes=("thirds",))
    with pytest.raises(ValueError, match="interval"):
        plan(1, nodes, interval=0)
    with pytest.raises(ValueError, match="at least one"):
        plan(1, nodes, shapes=())


def test_shapes_are_pure_no_io_and_nothing_else_of_ours() -> None:
    imported = all_imports(PACKAGE)["replica.testing.shapes"]
    assert not {name for name in imported if name.split(".")[0] in CORE_MAY_NOT_IMPORT}
    assert not {name for name in imported if name.startswith("replica")}, imported
