"""Anti-entropy: digests of every keyspace, compared with one peer at a time.

What gossip missed (a partition, a restart, a wiped node) is found here.

A stateless exchange, started every few gossip ticks against one peer in turn:

1. `ae_roots {roots}` -> the peer answers `ae_roots_ok {buckets}` for each
   keyspace whose root hash differs (agreeing replicas stop here: one digest);
2. `ae_keys {keyspace, buckets, keys}` lists our keys of the differing buckets
   with their hashes -> the peer marks what we lack as pending deltas for us and
   answers `ae_keys_ok {keyspace, pull}` with what it lacks, which we mark
   pending for it.  The ordinary gossip then ships the states, batched.

So repair never needs its own data path, and a peer that was partitioned,
restarted or wiped converges without any write being repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from replica.crdt.canonical import canonical
from replica.crdt.malformed import Malformed, require_list, require_object, require_str
from replica.crdt.registry import NAMES
from replica.keyspaces import Keyspaces
from replica.replication.delta_tracker import DeltaTracker
from replica.replication.digest import KeyspaceDigest, compare_keys, differing_buckets

KEYS_PER_AE_MESSAGE = 8192  # well under max_line_bytes of key hashes
REHASH_KEYS_PER_TICK = 5000
"""Changed keys a gossip tick rehashes for the digests, so comparing never stalls the node.

Anti-entropy waits (and answers a peer's roots with nothing to compare)
while more keys than this are dirty; after a restart that takes a while of
ticks, during which deltas flow as usual."""

Send = Callable[[str, dict[str, Any]], bool]
"""Send a message body of ours to a peer; False when the link cannot take it now."""


class AntiEntropy:
    """The digests of a node's keyspaces and the comparison rounds with its peers."""

    def __init__(
        self, keyspaces: Keyspaces, peers: list[str], tracker: DeltaTracker, send: Send
    ) -> None:
        self.peers = peers
        self.tracker = tracker
        self.send = send
        self.digests = {name: KeyspaceDigest(_encoder(keyspaces, name)) for name in NAMES}
        self.rounds = dict.fromkeys(peers, 0)  # digest comparisons each peer answered
        self._next_peer = 0

    def changed(self, name: str, key: str) -> None:
        self.digests[name].changed(key)

    def refresh(self) -> None:
        """Rehash up to `REHASH_KEYS_PER_TICK` changed keys."""
        budget = REHASH_KEYS_PER_TICK
        for digest in self.digests.values():
            if budget <= 0:
                break
            step = min(budget, digest.dirty)
            digest.refresh(step)
            budget -= step

    def ready(self) -> bool:
        """Whether every digest can be brought up to date within one tick's rehash budget."""
        return sum(digest.dirty for digest in self.digests.values()) <= REHASH_KEYS_PER_TICK

    def start(self, connected: list[str], keys_per_slice: int) -> None:
        """Compare digests with a connected peer marked for repair, or else the next one.

        The next one must owe us no deltas: while deltas to a peer are still
        pending the digests differ anyway, and repairing then would only send
        again what gossip is already sending.  A peer marked for repair (its
        pending keys went over the bound) goes first once gossip to it is within
        one slice of caught up, which a steady stream of writes may never go below.
        """
        if not self.ready():
            return
        tracker = self.tracker
        repair = [
            p for p in connected if tracker.needs_repair(p) and tracker.pending(p) <= keys_per_slice
        ]
        if repair:
            peer = repair[0]
            tracker.repair_started(peer)
        else:
            idle = [p for p in connected if tracker.pending(p) == 0]
            if not idle:
                return
            peer = idle[self._next_peer % len(idle)]
            self._next_peer += 1
        self.send(peer, {"type": "ae_roots", "roots": self.roots()})

    def roots(self) -> dict[str, int]:
        """Each keyspace's root hash, every changed key rehashed first."""
        return {name: digest.root() for name, digest in self.digests.items()}

    def answer_roots(self, body: dict[str, Any]) -> dict[str, Any]:
        """A peer's roots: our bucket hashes for each keyspace where they differ."""
        roots = require_object(body.get("roots"), "field 'roots'")
        if not self.ready():
            return {"type": "ae_roots_ok", "buckets": {}}  # not yet: a later round compares
        buckets = {
            name: digest.buckets()
            for name, digest in self.digests.items()
            if roots.get(name) != digest.root()
        }
        return {"type": "ae_roots_ok", "buckets": buckets}

    def roots_answered(self, peer: str, body: dict[str, Any]) -> None:
        """The peer's differing buckets: send it our keys of each, a few buckets a message."""
        self.rounds[peer] += 1
        theirs = body.get("buckets")
        if not isinstance(theirs, dict):
            return
        for name, their_buckets in theirs.items():
            digest = self.digests.get(name)
            if digest is None or not isinstance(their_buckets, list):
                continue
            differing = differing_buckets(digest.buckets(), their_buckets)
            for group, keys in _bucket_groups(digest, differing, KEYS_PER_AE_MESSAGE):
                body = {"type": "ae_keys", "keyspace": name, "buckets": group, "keys": keys}
                self.send(peer, body)

    def answer_keys(self, src: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """A peer's keys of some buckets: queue ours that differ for it, ask for the rest."""
        name = require_str(body, "keyspace")
        digest = self.digests.get(name)
        if digest is None:
            raise Malformed(f"unknown keyspace {name!r}")
        raw_buckets = require_list(body.get("buckets"), "field 'buckets'")
        buckets = [b for b in raw_buckets if type(b) is int]
        theirs = require_object(body.get("keys"), "field 'keys'")
        push, pull = compare_keys(digest.keys_in(buckets), theirs)
        if src in self.peers:
            for key in push:
                self.tracker.mark(src, (name, key))
        return {"type": "ae_keys_ok", "keyspace": name, "pull": pull}

    def keys_answered(self, peer: str, body: dict[str, Any]) -> None:
        """The keys the peer lacks: pending deltas for it."""
        name = body.get("keyspace")
        pull = body.get("pull")
        if name not in self.digests or not isinstance(pull, list):
            return
        for key in pull:
            if isinstance(key, str):
                self.tracker.mark(peer, (name, key))


def _encoder(keyspaces: Keyspaces, name: str) -> Callable[[str], bytes | None]:
    """A key's digest input: the canonical encoding of its wire state."""
    states = keyspaces.states[name]

    def encode(key: str) -> bytes | None:
        state = states.get(key)
        return None if state is None else canonical(state.to_wire())

    return encode


def _bucket_groups(
    digest: KeyspaceDigest, buckets: list[int], max_keys: int
) -> Iterable[tuple[list[int], dict[str, int]]]:
    """Whole buckets grouped so that one message lists about `max_keys` keys at most."""
    group: list[int] = []
    keys: dict[str, int] = {}
    for bucket in buckets:
        in_bucket = digest.keys_in([bucket])
        if group and len(keys) + len(in_bucket) > max_keys:
            yield group, keys
            group, keys = [], {}
        group.append(bucket)
        keys.update(in_bucket)
    if group:
        yield group, keys
