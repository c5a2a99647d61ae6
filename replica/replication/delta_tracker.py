"""Which changed keys each peer still needs: delta selection, kept apart from I/O.

Every change to a key bumps a node-wide sequence number and marks the key
pending for every peer.  A gossip tick `take`s the keys a peer needs, the shell
sends their *current* states (states are join-semilattice values, so the latest
state subsumes every earlier delta), and records the message with `sent`.  An
acknowledgement clears a key only if it did not change again after it was
sent; a message never acknowledged expires and its keys are taken again.

Pending work is tracked per key, not per write, so memory is bounded by the
number of distinct changed keys however fast they are written (the design of
Akka Distributed Data's delta propagation, simplified to whole per-key states).
A peer that stays away while more than `max_pending` keys change (one that
never started, or a long partition) would still hold a set as large as the
keyspace, so past that bound its pending set is dropped and the peer is marked
for a full anti-entropy repair instead, which finds the same keys by digest
once it is back.  A repair itself marks keys only up to the bound and leaves
the rest to its next round.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

KeyRef = tuple[str, str]
"""(keyspace, key)."""

MAX_PENDING_KEYS = 100_000
"""Keys pending for one peer before they are dropped in favour of a repair."""


@dataclass(slots=True)
class _InFlight:
    sent_at: float
    items: dict[KeyRef, int]


@dataclass(slots=True)
class _PeerDeltas:
    # keys waiting to be sent -> seq of their latest change; a key in flight
    # leaves this map, so taking work never rescans what is already on its way
    pending: dict[KeyRef, int] = field(default_factory=dict)
    in_flight: dict[KeyRef, tuple[int, int]] = field(default_factory=dict)  # -> (msg_id, seq)
    messages: dict[int, _InFlight] = field(default_factory=dict)
    dropped: int = 0  # pending keys given up to anti-entropy, in all
    needs_repair: bool = False

    def owed(self) -> int:
        """Keys not yet acknowledged: waiting, or in flight and unchanged since."""
        return len(self.pending) + sum(1 for ref in self.in_flight if ref not in self.pending)

    def requeue(self, msg_id: int) -> None:
        """A message will never be acknowledged: what it carried waits again."""
        for ref, seq in self.messages.pop(msg_id).items.items():
            if self.in_flight.get(ref, (None,))[0] == msg_id:
                del self.in_flight[ref]
                self.pending.setdefault(ref, seq)


class DeltaTracker:
    """Per-peer pending keys, in-flight messages and acknowledgements."""

    def __init__(
        self,
        peers: Iterable[str],
        *,
        resend_after: float = 2.0,
        max_pending: int = MAX_PENDING_KEYS,
    ) -> None:
        self.resend_after = resend_after
        self.max_pending = max_pending
        self._seq = 0
        self._peers: dict[str, _PeerDeltas] = {peer: _PeerDeltas() for peer in peers}

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    @property
    def seq(self) -> int:
        """The sequence number of the latest change or mark: a state taken now includes it."""
        return self._seq

    def changed(self, ref: KeyRef) -> None:
        self._seq = seq = self._seq + 1
        limit = self.max_pending
        for state in self._peers.values():
            pending = state.pending
            pending[ref] = seq
            if len(pending) > limit:
                _drop_to_repair(state)

    def mark(self, peer: str, ref: KeyRef) -> None:
        """One peer needs a key again (anti-entropy found it missing or different there)."""
        state = self._peers.get(peer)
        if state is None or ref in state.pending or ref in state.in_flight:
            return
        if len(state.pending) >= self.max_pending:
            state.needs_repair = True  # a later round finds the key again
            return
        self._seq += 1
        state.pending[ref] = self._seq

    def take(self, peer: str, now: float, limit: int) -> list[tuple[KeyRef, int]]:
        """Up to `limit` pending keys for `peer` that no live message carries, oldest first."""
        state = self._peers[peer]
        self._expire(state, now)
        chosen: list[tuple[KeyRef, int]] = []
        for ref, seq in state.pending.items():
            if ref in state.in_flight:
                continue  # changed while in flight: goes again once that message is answered
            chosen.append((ref, seq))
            if len(chosen) >= limit:
                break
        return chosen

    def sent(self, peer: str, msg_id: int, items: list[tuple[KeyRef, int]], now: float) -> None:
        state = self._peers[peer]
        state.messages[msg_id] = _InFlight(now, dict(items))
        for ref, seq in items:
            state.in_flight[ref] = (msg_id, seq)
            if state.pending.get(ref) == seq:
                del state.pending[ref]

    def carried(self, peer: str, msg_id: int) -> dict[KeyRef, int]:
        """The keys message `msg_id` to `peer` carries, at the sequence numbers it covers."""
        state = self._peers.get(peer)
        message = None if state is None else state.messages.get(msg_id)
        return {} if message is None else message.items

    def acked(self, peer: str, msg_id: int) -> int:
        """Clear what message `msg_id` delivered; returns how many keys are now done."""
        state = self._peers.get(peer)
        message = None if state is None else state.messages.pop(msg_id, None)
        if state is None or message is None:
            return 0
        done = 0
        for ref in message.items:
            if state.in_flight.get(ref, (None,))[0] == msg_id:
                del state.in_flight[ref]
                if ref not in state.pending:
                    done += 1
        return done

    def discard(self, peer: str, ref: KeyRef) -> None:
        """A pending key that no longer exists: nothing of it is owed to `peer` any more."""
        self._peers[peer].pending.pop(ref, None)

    def owes(self, ref: KeyRef) -> bool:
        """Whether some peer has not acknowledged the key's latest state yet."""
        return any(ref in s.pending or ref in s.in_flight for s in self._peers.values())

    def pending(self, peer: str) -> int:
        return self._peers[peer].owed()

    def dropped(self, peer: str) -> int:
        """Pending keys given up to anti-entropy over the bound, in all."""
        return self._peers[peer].dropped

    def needs_repair(self, peer: str) -> bool:
        """Whether keys were dropped for `peer` and no repair round has started since."""
        return self._peers[peer].needs_repair

    def repair_started(self, peer: str) -> None:
        self._peers[peer].needs_repair = False

    def forget_in_flight(self, peer: str) -> None:
        """A connection dropped: whatever it carried will never be acknowledged."""
        state = self._peers[peer]
        for msg_id in list(state.messages):
            state.requeue(msg_id)
        self._bound(state)

    def _expire(self, state: _PeerDeltas, now: float) -> None:
        deadline = now - self.resend_after
        expired = [m for m, sent in state.messages.items() if sent.sent_at <= deadline]
        for msg_id in expired:
            state.requeue(msg_id)
        if expired:
            self._bound(state)

    def _bound(self, state: _PeerDeltas) -> None:
        if len(state.pending) > self.max_pending:
            _drop_to_repair(state)


def _drop_to_repair(state: _PeerDeltas) -> None:
    """Give up a peer's pending keys: a digest comparison finds whichever it still lacks."""
    state.dropped += len(state.pending)
    state.pending.clear()
    state.needs_repair = True
