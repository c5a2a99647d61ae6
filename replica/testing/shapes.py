"""Partition shapes: the directed links to cut, as pure functions of the nodes and a random draw.

After Jepsen's partitioners (`jepsen.nemesis`).  A shape is a function
`(nodes, rng) -> frozenset[Link]` naming the directed links to cut; node X
*sees* node Y when the link (Y, X) is not cut, since that is the direction
that carries Y's gossip to X.  Every shape names only the nodes it is given,
never a self link, and draws its randomness from `rng` alone, so a seed
replays it.  `SHAPES` names each once:

- `halves`: the nodes shuffled into two halves (sizes differ by at most one),
  every link between them cut both ways;
- `random_node`: one random node cut off from every other, both ways;
- `majorities_ring`: every node sees a majority (itself included) and no two
  nodes see the same one (with three or more nodes); a ring of cuts, one-way
  where the majority is even (with three nodes each node loses exactly one
  other);
- `bridge`: two halves that cannot talk and one node, the bridge, in both,
  which sees and is seen by every node;
- `one_way`: one random direction between two nodes.

Pure: no asyncio, no sockets.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

Link = tuple[str, str]
"""(from node, to node): the direction of the dial, which carries `from`'s gossip to `to`."""

ShapeFunction = Callable[[Sequence[str], random.Random], frozenset[Link]]


def between(groups: Iterable[Iterable[str]]) -> frozenset[Link]:
    """Every directed link between two nodes in different groups."""
    group_of = {node: index for index, group in enumerate(groups) for node in group}
    return frozenset((a, b) for a in group_of for b in group_of if group_of[a] != group_of[b])


def _shuffled(nodes: Sequence[str], rng: random.Random) -> list[str]:
    order = sorted(set(nodes))  # the draw depends on the node set, not the order given
    rng.shuffle(order)
    return order


def majority(count: int) -> int:
    """The smallest number of nodes that is more than half of `count`."""
    return count // 2 + 1


def halves(nodes: Sequence[str], rng: random.Random) -> frozenset[Link]:
    """Two random halves, sizes differing by at most one, cut apart both ways."""
    order = _shuffled(nodes, rng)
    middle = len(order) // 2
    return between([order[:middle], order[middle:]])


def random_node(nodes: Sequence[str], rng: random.Random) -> frozenset[Link]:
    """One random node cut off from every other, both ways."""
    order = _shuffled(nodes, rng)
    if not order:
        return frozenset()
    return between([order[:1], order[1:]])


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> frozenset[Link]:
    """Nodes in a random ring; each sees the majority-sized window of the ring around itself."""
    order = _shuffled(nodes, rng)
    count = len(order)
    size = majority(count)
    cuts: set[Link] = set()
    for position, node in enumerate(order):
        first = position - size // 2
        visible = {order[(first + offset) % count] for offset in range(size)}
        cuts.update((other, node) for other in order if other not in visible)
    return frozenset(cuts)


def bridge(nodes: Sequence[str], rng: random.Random) -> frozenset[Link]:
    """Two halves cut apart both ways but for one node of the second, which reaches both."""
    order = _shuffled(nodes, rng)
    middle = len(order) // 2
    return between([order[:middle], order[middle + 1 :]])


def one_way(nodes: Sequence[str], rng: random.Random) -> frozenset[Link]:
    """One random direction: what the first node sends never reaches the second."""
    order = _shuffled(nodes, rng)
    if len(order) < 2:
        return frozenset()
    return frozenset({(order[0], order[1])})


SHAPES: dict[str, ShapeFunction] = {
    "halves": halves,
    "random_node": random_node,
    "majorities_ring": majorities_ring,
    "bridge": bridge,
    "one_way": one_way,
}


def shape_named(name: str) -> ShapeFunction:
    """The registered shape `name`, or a ValueError listing the names there are."""
    try:
        return SHAPES[name]
    except KeyError:
        raise ValueError(f"no shape {name!r}; there are {sorted(SHAPES)}") from None


def describe(links: Iterable[Link]) -> str:
    """The links as text: `a x b` for a pair cut both ways, `a -> b` for one direction."""
    cut = set(links)
    parts = []
    for a, b in sorted(cut):
        if (b, a) in cut:
            if a < b:
                parts.append(f"{a} x {b}")
        else:
            parts.append(f"{a} -> {b}")
    return ", ".join(parts) if parts else "nothing"


@dataclass(frozen=True)
class Cut:
    """A shape applied: its name and exactly the links it cut."""

    name: str
    links: frozenset[Link]

    def __str__(self) -> str:
        return f"{self.name}: cut {describe(self.links)}"
