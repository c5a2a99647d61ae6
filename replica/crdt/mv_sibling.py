"""One value of a multi-value register and the write event that made it: a dotted sibling.

Source: Preguiça et al., "Dotted Version Vectors" (2010).  A sibling keeps its
dot `(node, counter)` apart from its past, the version vector of what its write
had seen; `replica.crdt.mv_register` explains why.  Invariant: no sibling's
past covers its own dot (a write never precedes itself).
"""

from __future__ import annotations

from typing import Any, Final

from replica.crdt import version_vector
from replica.crdt.canonical import canonical
from replica.crdt.malformed import Malformed, require_field, require_object
from replica.crdt.version_vector import Dot, VersionVector, covers


class Sibling:
    """One stored value and the write event that made it: `dot` is `(node, counter)`.

    Immutable: the fields are `Final`, which mypy checks and the compiled
    build enforces (assigning raises `AttributeError`).  The dot's two parts
    are kept as fields of their own, not as a `Dot` object, because a node
    holds a sibling per key: the extra object would cost every key 56 bytes
    and an allocation per write.  `dot` builds the `Dot` on demand.

    Equality compares values by their canonical JSON, because `1` and `true`
    (or `1` and `1.0`) are equal in Python but are different writes on the
    wire; a merge that swaps one for the other must not look like no change.
    """

    __slots__ = ("counter", "node", "past", "value")

    def __init__(self, value: Any, node: str, counter: int, past: VersionVector) -> None:
        """Callers pass fields that keep the invariants (`from_wire` checks a peer's)."""
        self.value: Final[Any] = value
        self.node: Final[str] = node
        self.counter: Final[int] = counter
        self.past: Final[VersionVector] = past

    @staticmethod
    def at(value: Any, dot: Dot, past: VersionVector) -> Sibling:
        """The sibling of `value` written as event `dot`, having seen `past`."""
        return Sibling(value, dot[0], dot[1], past)

    def __repr__(self) -> str:
        return f"Sibling(value={self.value!r}, dot={self.dot!r}, past={self.past!r})"

    @property
    def dot(self) -> Dot:
        return tuple.__new__(Dot, (self.node, self.counter))

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
        return Sibling(value, dot.node, dot.counter, past or NO_PAST)

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
        return Sibling(value, node, counter, past or NO_PAST)


NO_PAST: VersionVector = {}
"""The past of every sibling that had seen nothing, shared: version vectors are never mutated."""


def stored_sibling(entry: Any) -> Sibling:
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
    return Sibling(value, node, counter, past or NO_PAST)
