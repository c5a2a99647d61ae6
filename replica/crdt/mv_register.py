"""Multi-value register with server-side causality: dotted version vectors.

Source: Preguiça, Baquero, Almeida, Fonte and Gonçalves, "Dotted Version
Vectors: Logical Clocks for Optimistic Replication" (2010), and Riak's DVVSet,
which adopted them to end sibling explosion.  The register keeps every value
whose write no other kept write had seen, and lets a client name what it has
seen by handing back the context of an earlier reply.

Each sibling carries a *dot* `(node, counter)`, the one write event that made
it, and a *past*, the version vector of what that write had seen.  Keeping the
dot apart from the past is the whole point.  A classic version vector per value
folds the event into its history: a node stamping a stale client's write with
its own next counter makes it look as if it had seen every earlier write of
that node, so the server must either lose concurrent updates or keep every
such write as a sibling, and siblings pile up (Riak's sibling explosion).  With
the dot apart, a write supersedes exactly the events its context covers.

Invariants of an `MVRegister`:

- its siblings are sorted by dot (node, then counter), so equal states compare
  equal with `==` and replies list values in the same order on every replica;
- no two siblings share a dot;
- no sibling is obsolete: no other sibling's past covers its dot;
- no sibling's past covers its own dot (a write never precedes itself).

Merge is a join (commutative, associative, idempotent) over the states that
honest replicas and clients can reach, where every context a write carries is
one some register's `context()` returned.  A hand-made context can claim a
history that no replica has, and then merge order can matter; that is inherent
to dotted version vectors, not something this module can repair.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from replica.crdt import version_vector
from replica.crdt.canonical import canonical
from replica.crdt.malformed import (
    Malformed,
    require_field,
    require_list,
    require_object,
)
from replica.crdt.version_vector import Dot, VersionVector, covers


class Sibling:
    """One stored value and the write event that made it: `dot` is `(node, counter)`.

    Immutable like a frozen dataclass (assigning an attribute raises).  The
    dot's two parts are kept as fields of their own, not as a `Dot` object,
    because a node holds a sibling per key: the extra object would cost every
    key 56 bytes and an allocation per write.  `dot` builds the `Dot` on demand.

    Equality compares values by their canonical JSON, because `1` and `true`
    (or `1` and `1.0`) are equal in Python but are different writes on the
    wire; a merge that swaps one for the other must not look like no change.
    """

    __slots__ = ("counter", "node", "past", "value")
    value: Any
    node: str
    counter: int
    past: VersionVector

    def __init__(self, value: Any, dot: Dot, past: VersionVector) -> None:
        _set_value(self, value)
        _set_node(self, dot[0])
        _set_counter(self, dot[1])
        _set_past(self, past)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a Sibling is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a Sibling is immutable: cannot delete {name!r}")

    def __repr__(self) -> str:
        return f"Sibling(value={self.value!r}, dot={self.dot!r}, past={self.past!r})"

    @property
    def dot(self) -> Dot:
        return _new_tuple(Dot, (self.node, self.counter))

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Sibling):
            return NotImplemented
        return (
            self.counter == other.counter
            and self.node == other.node
            and self.past == other.past
            and (self.value is other.value or canonical(self.value) == canonical(other.value))
        )

    def __hash__(self) -> int:
        return hash((self.node, self.counter))

    def seen_by(self, history: VersionVector) -> bool:
        """Whether `history` contains this sibling's write (`covers(history, self.dot)`)."""
        return history.get(self.node, 0) >= self.counter

    def vclock(self) -> VersionVector:
        """The write's whole history, itself included: the `vclock` of PROTOCOL.md's `mv_read`.

        No sibling's past covers its own dot (an invariant), so the dot's entry
        is always the larger one.
        """
        return {**self.past, self.node: self.counter}

    def to_wire(self) -> dict[str, Any]:
        return {"value": self.value, "dot": [self.node, self.counter], "past": dict(self.past)}

    def to_read(self) -> dict[str, Any]:
        return {"value": self.value, "vclock": self.vclock(), "dot": [self.node, self.counter]}

    @staticmethod
    def from_wire(raw: Any) -> Sibling:
        """Validate a peer's `{value, dot, past}`; `Malformed` leaves the receiver untouched."""
        obj = require_object(raw, "an MV sibling")
        try:
            value = require_field(obj, "value")
            dot = Dot.from_wire(require_field(obj, "dot"))
            past = version_vector.from_wire(require_field(obj, "past"), "field 'past'")
        except Malformed as exc:
            raise Malformed(f"MV sibling: {exc}") from None
        if covers(past, dot):
            raise Malformed(
                f"MV sibling: its past {past} already contains its own dot {dot.to_wire()}"
            )
        return _sibling(value, dot.node, dot.counter, past or _NO_PAST)

    @staticmethod
    def from_entry(raw: Any, sender: str | None) -> Sibling:
        """Read PROTOCOL.md's dot-less `mv_merge` entry `{value, vclock}` as a version-vector value.

        A plain version vector merges the write into its history; the write is
        the newest event of the node that made it, so its dot is that node's
        entry and its past is the rest.  That node is the sender, or the only
        node the vector names; with neither, the write cannot be placed.
        """
        obj = require_object(raw, "an MV entry")
        try:
            value = require_field(obj, "value")
            vclock = version_vector.from_wire(require_field(obj, "vclock"), "field 'vclock'")
        except Malformed as exc:
            raise Malformed(f"MV entry: {exc}") from None
        if not vclock:
            raise Malformed("MV entry: its vclock is empty, so no write made it")
        if sender is not None and sender in vclock:
            node = sender
        elif len(vclock) == 1:
            (node,) = vclock
        else:
            raise Malformed(
                f"MV entry: cannot tell which node wrote it: its vclock {vclock} "
                f"has several entries and none is the sender {sender!r}"
            )
        counter = vclock[node]
        past = dict(vclock)
        if counter == 1:
            del past[node]
        else:
            past[node] = counter - 1
        return _sibling(value, node, counter, past or _NO_PAST)


class MVRegister(tuple[Sibling, ...]):
    """A key's concurrent values.  The empty register is the absent key.

    The register *is* the tuple of its siblings, immutable like one, rather
    than an object holding a tuple: a node keeps one register per key, and
    the wrapper object would cost 48 bytes of every key's memory.
    """

    __slots__ = ()

    @property
    def siblings(self) -> tuple[Sibling, ...]:
        return self

    def __repr__(self) -> str:
        return f"MVRegister({tuple.__repr__(self)})"

    @staticmethod
    def of(siblings: Iterable[Sibling]) -> MVRegister:
        """Normalise any collection of siblings into a register that keeps the invariants."""
        by_dot: dict[Dot, Sibling] = {}
        for s in siblings:
            _admit(by_dot, s)
        return MVRegister(_prune(by_dot))

    def values(self) -> list[Any]:
        return [s.value for s in self.siblings]

    def context(self) -> VersionVector:
        """Everything a reader of this register has seen, for it to hand back on its next write."""
        siblings = self.siblings
        if len(siblings) == 1:  # the common case: one value, whose vclock is the context
            return siblings[0].vclock()
        out = version_vector.join_all(s.past for s in siblings)
        for s in siblings:
            node, counter = s.node, s.counter
            if counter > out.get(node, 0):
                out[node] = counter
        return out

    def read_view(self) -> tuple[list[dict[str, Any]], VersionVector]:
        """What a read returns, the values with their vclocks and the context, built once.

        With one sibling its vclock is the context, and the reply shares the dict.
        """
        if len(self) == 1:
            only = self[0].to_read()
            return [only], only["vclock"]
        return [s.to_read() for s in self], self.context()

    def write(
        self, node: str, value: Any, context: VersionVector | None
    ) -> tuple[MVRegister, Sibling]:
        """A client's write at `node`; returns the new register and the sibling it added.

        Without a context the writer is taken to have seen every local value
        (Jylis's SET replaces what is visible here).  The counter comes from
        the local context, raised to the given one's entry for `node`, so the
        new dot is never inside its own past even if the client's context
        claims more of this node's events than this replica holds.
        """
        local = self.context() if self else _NO_PAST
        if context is None:
            # The local context covers every local sibling, so the new one is alone.
            new = _sibling(value, node, local.get(node, 0) + 1, local)
            return _register((new,)), new
        past = dict(context)
        counter = max(local.get(node, 0), past.get(node, 0)) + 1
        new = _sibling(value, node, counter, past)
        # No kept sibling can cover the new dot (its counter is above every
        # local entry for `node`), so only the superseded ones need dropping.
        kept = [s for s in self.siblings if not s.seen_by(past)]
        kept.append(new)
        kept.sort(key=_by_dot)
        return _register(kept), new

    def merge(self, other: MVRegister) -> MVRegister:
        """Union by dot, then drop what some sibling's past has seen."""
        if other is self or not other.siblings:
            return self
        if not self.siblings:
            return other
        if self.siblings == other.siblings:
            return self
        by_dot = {s.dot: s for s in self.siblings}
        for s in other.siblings:
            _admit(by_dot, s)
        return MVRegister(_prune(by_dot))

    def to_wire(self) -> list[dict[str, Any]]:
        return [s.to_wire() for s in self.siblings]

    @staticmethod
    def from_wire(raw: Any) -> MVRegister:
        """A peer's sibling set, validated and normalised (a peer's order is not trusted)."""
        entries = require_list(raw, "an MV sibling set")
        siblings = []
        for i, entry in enumerate(entries):
            try:
                siblings.append(Sibling.from_wire(entry))
            except Malformed as exc:
                raise Malformed(f"sibling {i}: {exc}") from None
        return MVRegister.of(siblings)

    def to_stored(self) -> list[list[Any]]:
        """The compact form a node stores: `[value, node, counter, past]` per sibling.

        Every commit encodes the states it carries on the event loop, so this
        skips what the wire form adds for peers (field names, copied pasts).
        """
        return [[s.value, s.node, s.counter, s.past] for s in self]

    @staticmethod
    def from_stored(raw: Any) -> MVRegister:
        """A sibling set as `to_stored` (or `to_wire`) wrote it to this node's own store.

        The register that was stored already kept every invariant, in canonical
        sibling order, so nothing is validated, deduplicated, pruned or sorted
        here: only the shape and the types are checked.  A record of another
        shape raises `TypeError`, `ValueError` or `KeyError` rather than load as
        a register.  State from anywhere else (a peer, a client) must go through
        `from_wire`.
        """
        if type(raw) is not list:
            raise TypeError("an MV sibling set must be an array")
        return _register([_stored_sibling(entry) for entry in raw])


_new = object.__new__
_set_value = Sibling.value.__set__  # type: ignore[misc]
_set_node = Sibling.node.__set__  # type: ignore[misc,attr-defined]
_set_counter = Sibling.counter.__set__  # type: ignore[misc,attr-defined]
_set_past = Sibling.past.__set__  # type: ignore[misc,attr-defined]
_new_tuple = tuple.__new__
_NO_PAST: VersionVector = {}
"""The past of every sibling that had seen nothing, shared: version vectors are never mutated."""


def _stored_sibling(entry: Any) -> Sibling:
    """One sibling of `from_stored`: `[value, node, counter, past]`, or the wire's object."""
    if type(entry) is list:
        value, node, counter, past = entry
    else:
        dot = entry["dot"]
        if type(dot) is not list:
            raise TypeError("an MV sibling's dot must be [node, counter]")
        value, (node, counter), past = entry["value"], dot, entry["past"]
    if type(node) is not str or type(counter) is not int or type(past) is not dict:
        raise TypeError("an MV sibling must have a node, a counter and an object past")
    if past and any(type(seen) is not int for seen in past.values()):
        raise TypeError("an MV sibling's past must map node ids to counters")
    return _sibling(value, node, counter, past or _NO_PAST)


def _sibling(value: Any, node: str, counter: int, past: VersionVector) -> Sibling:
    """A Sibling built by setting its slots, without the checks of a constructor call.

    Callers pass fields that already keep the invariants; this is the path of
    every write and every stored sibling loaded at start.
    """
    sibling = _new(Sibling)
    _set_value(sibling, value)
    _set_node(sibling, node)
    _set_counter(sibling, counter)
    _set_past(sibling, past)
    return sibling


def _register(siblings: tuple[Sibling, ...] | list[Sibling]) -> MVRegister:
    return _new_tuple(MVRegister, siblings)


def _by_dot(s: Sibling) -> tuple[str, int]:
    return s.node, s.counter


def _admit(by_dot: dict[Dot, Sibling], s: Sibling) -> None:
    """Add `s`, keeping one deterministic sibling per dot.

    Honest replicas never issue one dot twice, but a peer that lost its state
    and reused counters can; picking by value and past, not by arrival, keeps
    merge commutative even then.
    """
    held = by_dot.get(s.dot)
    if held is None or (held != s and _rank(s) > _rank(held)):
        by_dot[s.dot] = s


def _rank(s: Sibling) -> tuple[bytes, list[tuple[str, int]]]:
    return canonical(s.value), sorted(s.past.items())


def _prune(by_dot: dict[Dot, Sibling]) -> tuple[Sibling, ...]:
    """The non-obsolete siblings, sorted by dot.

    Obsolescence is judged against every candidate, obsolete ones included: in
    reachable states whatever covers an obsolete sibling's dot has also seen
    that sibling's past, so the answer is the same and no second pass is needed.
    """
    candidates = list(by_dot.values())
    if len(candidates) > 1:
        candidates = [
            x for x in candidates if not any(y is not x and x.seen_by(y.past) for y in candidates)
        ]
        candidates.sort(key=_by_dot)
    return tuple(candidates)
