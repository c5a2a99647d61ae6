"""Version vectors and dots: the logical clocks under the MV register.

A *dot* `(node, counter)` names one write event: the `counter`-th event that
`node` generated for a key.  A *version vector* `{node: counter}` names a
downward-closed set of events: every dot `(n, c)` with `c <= vv[n]`.  A missing
entry is zero, so `{}` is the empty history and entries equal to zero are never
stored (two equal histories always have equal dictionaries).

Version vectors here are plain `dict[str, int]` treated as immutable values:
every function returns a new dictionary and never mutates its arguments.  Plain
dictionaries are what the wire carries, so no conversion sits on the hot path.

Source: Parker et al., "Detection of Mutual Inconsistency in Distributed
Systems" (1983); dots as in Preguiça et al., "Dotted Version Vectors" (2010).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from replica.crdt.malformed import MAX_INT, Malformed, require_count

VersionVector = dict[str, int]


class Dot(NamedTuple):
    """One write event. Ordered by node, then counter, so sibling order is deterministic."""

    node: str
    counter: int

    def to_wire(self) -> list[Any]:
        return [self.node, self.counter]

    @staticmethod
    def from_wire(raw: Any) -> Dot:
        if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], str)):
            raise Malformed("a dot must be [node, counter]")
        counter = require_count(raw[1], "a dot's counter")
        if counter == 0:
            raise Malformed("a dot's counter starts at 1")
        return Dot(raw[0], counter)


def join(a: Mapping[str, int], b: Mapping[str, int]) -> VersionVector:
    """Entry-wise maximum: the union of the two histories."""
    if not b:
        return dict(a)
    out = dict(a)
    for node, counter in b.items():
        if counter > out.get(node, 0):
            out[node] = counter
    return out


def join_all(vectors: Iterable[Mapping[str, int]]) -> VersionVector:
    out: VersionVector = {}
    for vv in vectors:
        for node, counter in vv.items():
            if counter > out.get(node, 0):
                out[node] = counter
    return out


def covers(vv: Mapping[str, int], dot: Dot) -> bool:
    """Whether the history `vv` contains the event `dot`."""
    return vv.get(dot.node, 0) >= dot.counter


def from_wire(
    raw: Any, what: str = "a version vector", limit: int = MAX_INT, max_actors: int | None = None
) -> VersionVector:
    """Validate `{node: counter}`, each counter at most `limit`, at most `max_actors` entries.

    Zero entries are dropped so equal histories compare equal.  A client's
    context is read with `MAX_COUNTER` and `MAX_CONTEXT_ACTORS`, a peer's with
    `MAX_INT` and no bound on its entries (replicated state is never refused).
    """
    if not isinstance(raw, dict):
        raise Malformed(f"{what} must be an object of node id to counter")
    if max_actors is not None and len(raw) > max_actors:
        raise Malformed(f"{what} names {len(raw)} actors; at most {max_actors} are accepted")
    out: VersionVector = {}
    for node, counter in raw.items():
        if require_count(counter, f"{what}'s entry {node!r}", limit):
            out[node] = counter
    return out
