"""Tombstone collection: a key holding nothing but a tombstone goes once every node holds it.

A tombstone is what stops a peer's old copy of a deleted value from bringing
it back, so a node may drop one only when no old copy can reach it any more
(causal stability).  A node drops a key that holds only a tombstone, state T,
when all of these hold:

- every peer has *confirmed* T: after holding T (or more), it sent the key
  to this node on its own link, or said it had dropped the key itself
  (`tombstone_gone`).  One connection delivers in order, so every older
  message of that peer, one that could carry the deleted value, has arrived
  and was absorbed by T.  A confirmation counts only while that peer has one
  inbound connection here: an older one could still hold unread messages;
- T is on disk here, and no peer is still owed this node's copy (a peer that
  never hears it would keep its own tombstone for ever);
- no quorum read of the key is waiting here: an answer is a peer's state
  travelling on this node's link, outside that order.

A peer is asked to confirm with `tombstone_ask`; it answers by sending the
key as gossip (marked pending for the asker), or with `tombstone_gone` for a
key it dropped recently.  A node holding nothing of a key it never dropped
does not answer: anti-entropy brings it the tombstone first.  A merge that
leaves a key holding only a tombstone is pushed to every peer like a local
change, so the confirmations of a fresh delete need no asking.

A node that is down holds every collection back: it never confirms.  In
`"async"` durability nothing is collected and no node is asked: a node could
confirm a tombstone it then loses in a crash.  Confirmations live in memory;
after a restart the keys are asked about again.  Only a proven peer
connection confirms anything: over stdio (a test harness's network, which
need not keep one sender's messages in order) tombstones are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from replica.crdt.registry import BY_NAME, TYPES
from replica.keyspaces import Keyspaces
from replica.replication.delta_tracker import KeyRef

ASK = "tombstone_ask"
GONE = "tombstone_gone"
ASK_EVERY_S = 3.0
"""How long a node waits for a peer's confirmation before asking it again."""
KEYS_PER_MESSAGE = 1024


@dataclass(slots=True)
class _Candidate:
    state: Any
    """The tombstone-only state the confirmations are for; any change starts over."""
    confirmed: set[str] = field(default_factory=set)
    asked_at: float = float("-inf")


class TombstoneCollector:
    """One node's tombstone-only keys, their confirmations, and which peers to ask."""

    def __init__(
        self,
        keyspaces: Keyspaces,
        peers: Iterable[str],
        *,
        ask_every: float = ASK_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keyspaces = keyspaces
        self.peers = list(peers)
        self.ask_every = ask_every
        self.clock = clock
        self.enabled = True
        """False where links need not keep one sender's order (stdio): nothing is collected."""
        self.candidates: dict[KeyRef, _Candidate] = {}
        self.inbound: dict[str, int] = {}
        """Peer -> its open connections to this node that proved it."""
        self._kinds = {
            t.name: (keyspaces.states[t.name], t.only_tombstone)
            for t in TYPES
            if t.only_tombstone is not None
        }

    # -- what the node holds ------------------------------------------------------------------

    def changed(self, keyspace: str, key: str) -> bool:
        """A key changed: True when it now holds only a tombstone it did not hold before."""
        kind = self._kinds.get(keyspace)
        if kind is None:
            return False
        states, only = kind
        state = states.get(key)
        if state is None or not only(state):  # every write goes through here: kept short
            if self.candidates:
                self.candidates.pop((keyspace, key), None)
            return False
        ref = (keyspace, key)
        held = self.candidates.get(ref)
        if held is not None and held.state == state:
            return False
        self.candidates[ref] = _Candidate(state)
        return True

    # -- confirmations ------------------------------------------------------------------------

    def link_opened(self, peer: str) -> None:
        self.inbound[peer] = self.inbound.get(peer, 0) + 1

    def link_closed(self, peer: str) -> None:
        left = self.inbound.get(peer, 0) - 1
        if left > 0:
            self.inbound[peer] = left
        else:
            self.inbound.pop(peer, None)

    def heard(self, peer: str | None, keyspace: str, key: str, incoming: Any) -> None:
        """A peer sent its state of a key (already merged here): a confirmation if it holds ours."""
        candidate = self.candidates.get((keyspace, key))
        if (
            candidate is not None
            and peer is not None
            and self.inbound.get(peer, 0) <= 1
            and candidate.state.merge(incoming) == incoming
        ):
            candidate.confirmed.add(peer)

    def gone(self, peer: str | None, refs: Iterable[KeyRef]) -> None:
        """A peer dropped these keys' tombstones: it holds nothing they would not absorb."""
        if peer is None or self.inbound.get(peer, 0) > 1:
            return
        for ref in refs:
            candidate = self.candidates.get(ref)
            if candidate is not None:
                candidate.confirmed.add(peer)

    # -- collecting ---------------------------------------------------------------------------

    def sweep(
        self, limit: int, held_back: Callable[[KeyRef], bool], connected: set[str]
    ) -> tuple[list[KeyRef], dict[str, list[KeyRef]]]:
        """Look at up to `limit` candidates: (the keys to drop now, the keys to ask each peer).

        `held_back(ref)`: the key is not on disk yet, still owed to a peer, or
        being read by a quorum.  Those looked at go to the back of the line.
        """
        now = self.clock()
        drop: list[KeyRef] = []
        asks: dict[str, list[KeyRef]] = {}
        candidates = self.candidates
        for ref in list(islice(candidates, limit)):
            candidate = candidates.pop(ref)
            candidates[ref] = candidate
            if held_back(ref):
                continue
            missing = [p for p in self.peers if p not in candidate.confirmed]
            if not missing:
                drop.append(ref)
            elif now - candidate.asked_at >= self.ask_every:
                candidate.asked_at = now
                for peer in missing:
                    if peer in connected:
                        asks.setdefault(peer, []).append(ref)
        return drop, asks

    def drop(self, refs: Iterable[KeyRef]) -> int:
        """Drop the keys `sweep` found ready; returns how many went."""
        dropped = 0
        for ref in refs:
            if self.keyspaces.remove(BY_NAME[ref[0]], ref[1]) is not None:
                dropped += 1
            self.candidates.pop(ref, None)
        return dropped


def by_keyspace(refs: Iterable[KeyRef]) -> dict[str, list[str]]:
    """The `keys` field of an ask or a gone message: keyspace -> keys."""
    out: dict[str, list[str]] = {}
    for keyspace, key in refs:
        out.setdefault(keyspace, []).append(key)
    return out


def chunks(refs: list[KeyRef]) -> Iterator[list[KeyRef]]:
    for start in range(0, len(refs), KEYS_PER_MESSAGE):
        yield refs[start : start + KEYS_PER_MESSAGE]
