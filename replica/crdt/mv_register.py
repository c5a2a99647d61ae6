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
- no sibling's past covers its own dot (a write never precedes itself);
- no sibling's dot is inside the deleted history `deleted`, and no entry of
  `deleted` is inside some sibling's past (it would be redundant).

A delete is a context, like a write's: it removes exactly the siblings the
context covers and joins the context into `deleted`, so the deleted values
never come back from a peer, and a later write, whose context includes
`deleted`, supersedes them rather than standing beside them.

Merge is a join (commutative, associative, idempotent) over the states that
honest replicas and clients can reach, where every context a write carries is
one some register's `context()` returned.  A hand-made context can claim a
history that no replica has, and then merge order can matter; that is inherent
to dotted version vectors, not something this module can repair.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final

from replica.crdt import version_vector
from replica.crdt.canonical import canonical
from replica.crdt.malformed import Malformed, require_list
from replica.crdt.mv_sibling import NO_PAST, Sibling, stored_sibling
from replica.crdt.version_vector import Dot, VersionVector

__all__ = ["MVRegister", "Sibling"]


class MVRegister:
    """A key's concurrent values, and the deleted history.  The empty register is the absent key.

    Immutable: `siblings` and `deleted` are `Final` (the compiled build
    refuses an assignment).  It reads as the sequence of its siblings:
    `len`, iteration, indexing, and false when it has none.

    `deleted` (D) is the version vector of what deletes removed: no kept
    sibling's dot is inside it, and none of its entries is already inside a
    kept sibling's past (that sibling's past removes the same dots on merge,
    so the entry is dropped at once and a key written after its delete
    carries no tombstone).  A register without a deleted history shares one
    empty dict, never mutated.  A register without siblings keeps D until it
    is collected: it is what stops a peer's copy of a deleted value coming back.
    """

    __slots__ = ("deleted", "siblings")

    def __init__(
        self, siblings: tuple[Sibling, ...] = (), deleted: VersionVector = NO_PAST
    ) -> None:
        """Callers pass siblings and a history that keep the invariants; `of` normalises any."""
        self.siblings: Final[tuple[Sibling, ...]] = siblings
        self.deleted: Final[VersionVector] = deleted

    def __repr__(self) -> str:
        return f"MVRegister({self.siblings!r}, deleted={self.deleted!r})"

    def __len__(self) -> int:
        return len(self.siblings)

    def __iter__(self) -> Iterator[Sibling]:
        return iter(self.siblings)

    def __getitem__(self, index: int) -> Sibling:
        return self.siblings[index]

    def __bool__(self) -> bool:
        return bool(self.siblings)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MVRegister):
            return NotImplemented
        return self.siblings == other.siblings and self.deleted == other.deleted

    def __hash__(self) -> int:
        return hash(self.siblings)

    @staticmethod
    def of(siblings: Iterable[Sibling], deleted: VersionVector = NO_PAST) -> MVRegister:
        """Normalise any collection of siblings and a deleted history into a register."""
        by_dot: dict[Dot, Sibling] = {}
        for s in siblings:
            _admit(by_dot, s)
        return _settle(by_dot, deleted)

    def values(self) -> list[Any]:
        return [s.value for s in self.siblings]

    def context(self) -> VersionVector:
        """Everything a reader of this register has seen, for it to hand back on its next write.

        The deleted history is part of it, so a write with this context is
        never concurrent with the values a delete removed.
        """
        siblings = self.siblings
        deleted = self.deleted
        if len(siblings) == 1 and not deleted:  # the common case: its vclock is the context
            return siblings[0].vclock()
        out = version_vector.join_all([deleted, *(s.past for s in siblings)])
        for s in siblings:
            node, counter = s.node, s.counter
            if counter > out.get(node, 0):
                out[node] = counter
        return out

    def read_view(self) -> tuple[list[dict[str, Any]], VersionVector]:
        """What a read returns, the values with their vclocks and the context, built once.

        With one sibling and no deleted history its vclock is the context, and
        the reply shares the dict.
        """
        siblings = self.siblings
        if len(siblings) == 1 and not self.deleted:
            only = siblings[0].to_read()
            return [only], only["vclock"]
        return [s.to_read() for s in siblings], self.context()

    def write(
        self, node: str, value: Any, context: VersionVector | None, floor: int = 0
    ) -> tuple[MVRegister, Sibling]:
        """A client's write at `node`; returns the new register and the sibling it added.

        Without a context the writer is taken to have seen every local value
        (Jylis's SET replaces what is visible here).  The counter comes from
        the local context, raised to the given one's entry for `node`, so the
        new dot is never inside its own past even if the client's context
        claims more of this node's events than this replica holds, nor inside
        the deleted history (the local context includes it).  It is above
        `floor` too: `node`'s counters up to it may have been issued for this
        key before its history was collected, and a client may still hold them.
        """
        local = self.context() if self.siblings or self.deleted else NO_PAST
        counter = local.get(node, 0)
        if counter < floor:
            counter = floor
        if context is None:
            # The local context covers every local sibling and the deleted
            # history, so the new one is alone and carries no tombstone.
            new = Sibling(value, node, counter + 1, local)
            return MVRegister((new,)), new
        past = dict(context)
        claimed = past.get(node, 0)
        if claimed > counter:
            counter = claimed
        new = Sibling(value, node, counter + 1, past)
        # No kept sibling can cover the new dot (its counter is above every
        # local entry for `node`), so only the superseded ones need dropping.
        kept = [s for s in self.siblings if not s.seen_by(past)]
        kept.append(new)
        kept.sort(key=_by_dot)
        return _with_deleted(tuple(kept), self.deleted), new

    def delete(self, context: VersionVector) -> MVRegister:
        """A client's delete: drop exactly the siblings `context` covers, and remember it.

        Concurrent siblings (dots outside the context) stay.  The context joins
        the deleted history, so a peer's copy of a removed sibling, or one the
        client saw elsewhere and that has not arrived here yet, is dropped when
        it comes.  So do the pasts of the removed siblings, as in `merge`.
        """
        kept = tuple(s for s in self.siblings if not s.seen_by(context))
        gone = [s.past for s in self.siblings if s.seen_by(context)]
        return _with_deleted(kept, version_vector.join_all([self.deleted, context, *gone]))

    def merge(self, other: MVRegister) -> MVRegister:
        """Union by dot, then drop what some sibling's past or either deleted history has seen."""
        if other is self:
            return self
        deleted, other_deleted = self.deleted, other.deleted
        if not deleted and not other_deleted:
            if not other.siblings or self.siblings == other.siblings:
                return self
            if not self.siblings:
                return other
        elif self == other or not (other.siblings or other_deleted):
            return self
        elif not (self.siblings or deleted):
            return other
        joined = version_vector.join(deleted, other_deleted) if other_deleted else deleted
        by_dot = {s.dot: s for s in self.siblings}
        for s in other.siblings:
            _admit(by_dot, s)
        return _settle(by_dot, joined)

    def to_wire(self) -> list[dict[str, Any]]:
        """Each sibling's `{value, dot, past}`, and `{deleted}` last when the history is not empty.

        The deleted history travels as one more element of the set, so a state
        split across messages is still a set of valid deltas.
        """
        wire = [s.to_wire() for s in self.siblings]
        if self.deleted:
            wire.append({"deleted": dict(self.deleted)})
        return wire

    @staticmethod
    def from_wire(raw: Any) -> MVRegister:
        """A peer's sibling set, validated and normalised (a peer's order is not trusted)."""
        entries = require_list(raw, "an MV sibling set")
        siblings = []
        deleted: VersionVector = NO_PAST
        for i, entry in enumerate(entries):
            try:
                if isinstance(entry, dict) and "deleted" in entry:
                    gone = version_vector.from_wire(entry["deleted"], "field 'deleted'")
                    deleted = version_vector.join(deleted, gone)
                else:
                    siblings.append(Sibling.from_wire(entry))
            except Malformed as exc:
                raise Malformed(f"sibling {i}: {exc}") from None
        return MVRegister.of(siblings, deleted)

    def to_stored(self) -> list[Any]:
        """The compact form a node stores: `[value, node, counter, past]` per sibling.

        Every commit encodes the states it carries on the event loop, so this
        skips what the wire form adds for peers (field names, copied pasts).
        A deleted history is one more element, `{"deleted": {...}}`.
        """
        stored: list[Any] = [[s.value, s.node, s.counter, s.past] for s in self.siblings]
        if self.deleted:
            stored.append({"deleted": self.deleted})
        return stored

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
        if raw and type(raw[-1]) is dict and "deleted" in raw[-1]:
            deleted = raw[-1]["deleted"]
            if type(deleted) is not dict or any(type(c) is not int for c in deleted.values()):
                raise TypeError("an MV register's deleted history must map node ids to counters")
            siblings = tuple([stored_sibling(entry) for entry in raw[:-1]])
            return MVRegister(siblings, deleted or NO_PAST)
        return MVRegister(tuple([stored_sibling(entry) for entry in raw]))


def _with_deleted(siblings: tuple[Sibling, ...], deleted: VersionVector) -> MVRegister:
    """The register of `siblings` (none inside `deleted`) and what of `deleted` is still needed.

    An entry some sibling's past already reaches is dropped: that past removes
    the same dots wherever the sibling goes.
    """
    if deleted:
        deleted = {
            node: counter
            for node, counter in deleted.items()
            if not any(s.past.get(node, 0) >= counter for s in siblings)
        }
    return MVRegister(siblings, deleted or NO_PAST)


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


def _settle(by_dot: dict[Dot, Sibling], deleted: VersionVector) -> MVRegister:
    """The register of candidate siblings and a deleted history: the obsolete and the deleted
    dropped, and the pasts of the deleted kept in the history.

    Obsolescence is judged against every candidate, obsolete and deleted ones
    included: in reachable states whatever covers an obsolete sibling's dot
    has also seen that sibling's past, so the answer is the same and no second
    pass is needed.  A deleted sibling's past joins the deleted history: the
    history may have dropped those entries while the sibling was kept (its past
    held them), and without them the register would forget events it had seen,
    among them its own node's counters, which a later write would then reissue.
    """
    candidates = list(by_dot.values())
    if len(candidates) > 1:
        candidates = [
            x for x in candidates if not any(y is not x and x.seen_by(y.past) for y in candidates)
        ]
        candidates.sort(key=_by_dot)
    if deleted:
        gone = [x.past for x in candidates if x.seen_by(deleted)]
        if gone:
            deleted = version_vector.join_all([deleted, *gone])
            candidates = [x for x in candidates if not x.seen_by(deleted)]
    return _with_deleted(tuple(candidates), deleted)
