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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

KeyRef = tuple[str, str]
"""(keyspace, key)."""


@dataclass(slots=True)
class _InFlight:
    sent_at: float
    items: dict[KeyRef, int]


@dataclass(slots=True)
class _PeerDeltas:
    pending: dict[KeyRef, int] = field(default_factory=dict)  # key -> seq of its latest change
    in_flight: dict[KeyRef, int] = field(default_factory=dict)  # key -> msg_id carrying it
    messages: dict[int, _InFlight] = field(default_factory=dict)


class DeltaTracker:
    """Per-peer pending keys, in-flight messages and acknowledgements."""

    def __init__(self, peers: Iterable[str], *, resend_after: float = 2.0) -> None:
        self.resend_after = resend_after
        self._seq = 0
        self._peers: dict[str, _PeerDeltas] = {peer: _PeerDeltas() for peer in peers}

    @property
    def peers(self) -> list[str]:
        return list(self._peers)

    def changed(self, ref: KeyRef) -> None:
        self._seq += 1
        for state in self._peers.values():
            state.pending[ref] = self._seq

    def mark(self, peer: str, ref: KeyRef) -> None:
        """One peer needs a key again (anti-entropy found it missing or different there)."""
        state = self._peers.get(peer)
        if state is not None and ref not in state.pending:  # pending already: it will go
            self._seq += 1
            state.pending[ref] = self._seq

    def take(self, peer: str, now: float, limit: int) -> list[tuple[KeyRef, int]]:
        """Up to `limit` pending keys for `peer` that no live message carries, oldest first."""
        state = self._peers[peer]
        self._expire(state, now)
        chosen: list[tuple[KeyRef, int]] = []
        for ref, seq in state.pending.items():
            if ref in state.in_flight:
                continue
            chosen.append((ref, seq))
            if len(chosen) >= limit:
                break
        return chosen

    def sent(self, peer: str, msg_id: int, items: list[tuple[KeyRef, int]], now: float) -> None:
        state = self._peers[peer]
        state.messages[msg_id] = _InFlight(now, dict(items))
        for ref, _ in items:
            state.in_flight[ref] = msg_id

    def acked(self, peer: str, msg_id: int) -> int:
        """Clear what message `msg_id` delivered; returns how many keys are now done."""
        state = self._peers.get(peer)
        message = None if state is None else state.messages.pop(msg_id, None)
        if state is None or message is None:
            return 0
        done = 0
        for ref, seq in message.items.items():
            if state.in_flight.get(ref) == msg_id:
                del state.in_flight[ref]
            if state.pending.get(ref) == seq:
                del state.pending[ref]
                done += 1
        return done

    def pending(self, peer: str) -> int:
        return len(self._peers[peer].pending)

    def forget_in_flight(self, peer: str) -> None:
        """A connection dropped: whatever it carried will never be acknowledged."""
        state = self._peers[peer]
        state.messages.clear()
        state.in_flight.clear()

    def _expire(self, state: _PeerDeltas, now: float) -> None:
        deadline = now - self.resend_after
        expired = [msg_id for msg_id, m in state.messages.items() if m.sent_at <= deadline]
        for msg_id in expired:
            for ref in state.messages.pop(msg_id).items:
                if state.in_flight.get(ref) == msg_id:
                    del state.in_flight[ref]
