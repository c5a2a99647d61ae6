"""Replication: delta gossip to every peer, and anti-entropy to repair what it missed.

The replicator listens to the keyspaces' change notifications.  Each gossip
tick it asks the `DeltaTracker` which keys each connected peer still needs and
sends their current states as `<keyspace>_merge` batches bounded in bytes;
peers acknowledge with `<keyspace>_merge_ok`.  Anti-entropy runs every few
ticks against one peer in turn, as a stateless exchange:

1. `ae_roots {roots}` → the peer answers `ae_roots_ok {buckets}` for each
   keyspace whose root hash differs (agreeing replicas stop here: one digest);
2. `ae_keys {keyspace, buckets, keys}` lists our keys of the differing buckets
   with their hashes → the peer marks what we lack as pending deltas for us and
   answers `ae_keys_ok {keyspace, pull}` with what it lacks, which we mark
   pending for it.  The ordinary gossip then ships the states, batched.

So repair never needs its own data path, and a peer that was partitioned,
restarted or wiped converges without any write being repeated.

Only durable states leave the node.  A key whose latest change is not yet on
disk (`Durability.settled` is False) is held back: it stays pending, and the
state it had when it was last seen unsettled ships instead once a commit has
made that state durable (a barrier taken right after seeing it).  So a key
written without pause still ships, one commit behind, and a dot is never seen
by a peer before the write that issued it survives a crash.  In-memory nodes
and "async" mode hold nothing back.

An MV or KV state too large for one message is sent as several, each a subset
of its siblings: merge is union then drop the obsolete, so each subset is a
valid delta and their merge in any order is the whole.  The key counts as
delivered only with its last part, sent after the others on the same link.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from replica.crdt.canonical import canonical
from replica.crdt.malformed import Malformed, require_list, require_object, require_str
from replica.errors import ErrorCode
from replica.keyspaces import KV, LWW, MV, MVCC
from replica.replication import delta_compression
from replica.replication.delta_tracker import MAX_PENDING_KEYS, DeltaTracker, KeyRef
from replica.replication.digest import KeyspaceDigest, compare_keys, differing_buckets

if TYPE_CHECKING:
    from replica.node.router import Node

log = logging.getLogger("replica.replication.replicator")

KEYSPACES = (MV, KV, MVCC, LWW)
MERGE_TYPE = {MV: "mv_merge", KV: "kv_merge", MVCC: "mvcc_merge", LWW: "lww_merge"}
STATE_FIELD = {MV: "siblings", KV: "siblings", MVCC: "state", LWW: "state"}
SPLITTABLE = (MV, KV)  # states that are lists of siblings
MERGE_ACKS = {f"{t}_ok" for t in MERGE_TYPE.values()}
KEYS_PER_AE_MESSAGE = 8192  # about 300 KiB of key hashes: well under max_line_bytes
REHASH_KEYS_PER_TICK = 5000
"""Changed keys a gossip tick rehashes for the digests: about 15 ms of work.

Anti-entropy waits (and answers a peer's roots with nothing to compare)
while more keys than this are dirty, so comparing never stalls the node on a
full rehash; after a restart with 1,000,000 keys that is about 40 s of ticks,
during which deltas flow as usual."""

REFUSAL_LOG_EVERY_S = 10.0

Outbox = Callable[[str, bytes], bool]
"""Hand one encoded line to peer `dest`; False when it cannot take it now."""

Snapshot = tuple[int, Any]
"""(the tracker's sequence number when a key's state was taken, that stored state)."""


class Replicator:
    """One node's outgoing replication state: pending deltas, digests, peer liveness."""

    def __init__(
        self,
        node: Node,
        peers: Iterable[str],
        *,
        max_message_bytes: int = 256 * 1024,
        keys_per_slice: int = 1024,
        resend_after: float = 3.0,
        anti_entropy_every: int = 10,
        max_pending: int = MAX_PENDING_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.peers = [p for p in peers if p != node.node_id]
        self.tracker = DeltaTracker(self.peers, resend_after=resend_after, max_pending=max_pending)
        self.digests = {ks: KeyspaceDigest(self._encoder(ks)) for ks in KEYSPACES}
        self.max_message_bytes = max_message_bytes
        self.keys_per_slice = keys_per_slice
        self.anti_entropy_every = anti_entropy_every
        self.clock = clock
        self.outbox: Outbox = lambda dest, line: False
        self.connected: set[str] = set()
        self.last_ack: dict[str, float] = {}
        self.bytes_sent = 0
        self.refused_merges = dict.fromkeys(self.peers, 0)  # keys of theirs we could not apply
        self.ae_rounds = dict.fromkeys(self.peers, 0)  # digest comparisons they answered
        self._refusal_logged: dict[str | None, tuple[float, int]] = {}  # -> (when, unlogged)
        self._ticks = 0
        self._next_ae_peer = 0
        self._repair_due = False
        # Keys held back until durable: states taken while unsettled, waiting for a
        # barrier; and states a barrier made durable, shippable while the key is not.
        self._awaiting: dict[KeyRef, Snapshot] = {}
        self._barrier: asyncio.Future[None] | None = None
        self._durable: dict[KeyRef, Snapshot] = {}
        node.keyspaces.listeners.append(self._changed)

    # -- change notifications ---------------------------------------------------------

    def _changed(self, keyspace: str, key: str, local: bool) -> None:
        self.digests[keyspace].changed(key)
        if local:
            self.tracker.changed((keyspace, key))

    def _encoder(self, keyspace: str) -> Callable[[str], bytes | None]:
        def encode(key: str) -> bytes | None:
            state = self.state_of(keyspace, key)
            return None if state is None else canonical(state)

        return encode

    def state_of(self, keyspace: str, key: str) -> Any:
        """The wire form of a key's state, as the `<keyspace>_merge` messages carry it."""
        stored = getattr(self.node.keyspaces, keyspace).get(key)
        return None if stored is None else stored.to_wire()

    # -- links -------------------------------------------------------------------------

    def link_up(self, peer: str) -> None:
        self.connected.add(peer)
        if peer in self.peers and self.tracker.needs_repair(peer):
            self._repair_due = True  # the next tick compares digests with it

    def link_down(self, peer: str) -> None:
        self.connected.discard(peer)
        if peer in self.peers:
            self.tracker.forget_in_flight(peer)

    # -- the gossip tick ---------------------------------------------------------------

    def tick(self) -> None:
        """Once per gossip interval: rehash a slice of changed keys; now and then, anti-entropy."""
        self._ticks += 1
        budget = REHASH_KEYS_PER_TICK
        for digest in self.digests.values():
            if budget <= 0:
                break
            step = min(budget, digest.dirty)
            digest.refresh(step)
            budget -= step
        self._forget_settled()
        if self.peers and (self._repair_due or self._ticks % self.anti_entropy_every == 0):
            self._repair_due = False
            self.start_anti_entropy()

    def _digests_ready(self) -> bool:
        """Whether every digest can be brought up to date within one tick's rehash budget."""
        return sum(digest.dirty for digest in self.digests.values()) <= REHASH_KEYS_PER_TICK

    def push(self) -> bool:
        """Send each connected peer one slice of its pending deltas; True if more are ready.

        Slices keep one call short, so a large backlog (a healed partition) is
        shipped across several event-loop turns instead of stalling clients.
        """
        now = self.clock()
        more = False
        for peer in self.peers:
            if peer in self.connected and self._push(peer, now):
                more = True
        if self._awaiting and self._barrier is None:
            self._await_durable()
        return more

    def _push(self, peer: str, now: float) -> bool:
        items = self.tracker.take(peer, now, self.keys_per_slice)
        by_keyspace: dict[str, list[tuple[KeyRef, int]]] = {}
        for item in items:
            by_keyspace.setdefault(item[0][0], []).append(item)
        for keyspace, group in by_keyspace.items():
            if not self._push_keyspace(peer, keyspace, group, now):
                return False
        return len(items) == self.keys_per_slice

    def _push_keyspace(
        self, peer: str, keyspace: str, items: list[tuple[KeyRef, int]], now: float
    ) -> bool:
        """Pack deltas into messages under the byte bound; False once the link is full."""
        field = STATE_FIELD[keyspace]
        bound = self.max_message_bytes
        batch: list[tuple[KeyRef, int]] = []
        chunks: list[bytes] = []
        size = 0
        for ref, seq in items:
            shippable = self._shippable(ref, seq)
            if shippable is None:
                continue
            stored, seq = shippable
            key = ref[1]
            state = stored.to_wire()
            chunk = orjson.dumps({"key": key, field: state})
            if len(chunk) > bound and keyspace in SPLITTABLE and len(state) > 1:
                *parts, chunk = _split_siblings(key, field, state, bound)
                for part in parts:  # delivered only with the last part, sent after these
                    if not self._send_deltas(peer, keyspace, [], [part], now):
                        return False
            if chunks and size + len(chunk) > bound:
                if not self._send_deltas(peer, keyspace, batch, chunks, now):
                    return False
                batch, chunks, size = [], [], 0
            batch.append((ref, seq))
            chunks.append(chunk)
            size += len(chunk) + 1
        return not chunks or self._send_deltas(peer, keyspace, batch, chunks, now)

    # -- only durable states leave the node ---------------------------------------------------

    def _shippable(self, ref: KeyRef, seq: int) -> tuple[Any, int] | None:
        """The stored state to send for a pending key, and the sequence number it covers.

        The current state when it is durable; else the latest durable snapshot,
        which clears the key only if it covers the change it is pending for;
        else None: the key waits.
        """
        current = getattr(self.node.keyspaces, ref[0]).get(ref[1])
        if current is None:
            return None
        durability = self.node.durability
        if durability is None or durability.settled(*ref):
            return current, seq
        if ref not in self._awaiting:
            self._awaiting[ref] = (self.tracker.seq, current)
        snapshot = self._durable.get(ref)
        if snapshot is None:
            return None
        taken_at, state = snapshot
        # sent under a sequence number it does not clear, the key goes again after the ack
        return state, seq if seq <= taken_at else taken_at

    def _await_durable(self) -> None:
        """Take a barrier: once it resolves, every state in `_awaiting` is on disk."""
        durability = self.node.durability
        barrier = None if durability is None else durability.barrier()
        if barrier is None:
            self._durable.update(self._awaiting)
            self._awaiting.clear()
            return
        self._barrier = barrier
        barrier.add_done_callback(self._barrier_done)

    def _barrier_done(self, barrier: asyncio.Future[None]) -> None:
        self._barrier = None
        awaiting, self._awaiting = self._awaiting, {}
        if not barrier.cancelled() and barrier.exception() is None:
            self._durable.update(awaiting)
        # else the commit failed or stalled: the keys are taken again at a later push

    def _forget_settled(self) -> None:
        """Drop durable snapshots of keys whose current state is durable again."""
        durability = self.node.durability
        if not self._durable or durability is None:
            return
        for ref in [ref for ref in self._durable if durability.settled(*ref)]:
            del self._durable[ref]

    def _send_deltas(
        self,
        peer: str,
        keyspace: str,
        batch: list[tuple[KeyRef, int]],
        chunks: list[bytes],
        now: float,
    ) -> bool:
        msg_id = self.node.take_msg_id()
        head = orjson.dumps({"src": self.node.node_id, "dest": peer})[:-1]
        body_head = orjson.dumps({"type": MERGE_TYPE[keyspace], "msg_id": msg_id})[:-1]
        deltas = b"".join((b"[", b",".join(chunks), b"]"))
        if len(deltas) >= delta_compression.COMPRESS_FROM_BYTES:
            field = b',"deltas_z":"' + delta_compression.pack(deltas).encode() + b'"'
        else:
            field = b',"deltas":' + deltas
        line = b"".join((head, b',"body":', body_head, field, b"}}\n"))
        if not self.outbox(peer, line):
            return False
        if batch:
            self.tracker.sent(peer, msg_id, batch, now)
        self.bytes_sent += len(line)
        return True

    def send(self, peer: str, body: dict[str, Any]) -> bool:
        line = self.node.envelope(peer, body)
        self.bytes_sent += len(line)
        return self.outbox(peer, line)

    # -- replies from peers --------------------------------------------------------------

    def on_reply(self, src: str | None, body: dict[str, Any]) -> None:
        """Acknowledgements and anti-entropy answers arriving on our outgoing messages."""
        if src is None or src not in self.peers:
            return
        msg_type = body.get("type")
        in_reply_to = body.get("in_reply_to")
        if msg_type in MERGE_ACKS:
            if type(in_reply_to) is int:
                self.tracker.acked(src, in_reply_to)
                self.last_ack[src] = self.clock()
        elif msg_type == "ae_roots_ok":
            self.ae_rounds[src] += 1
            self._send_keys(src, body)
        elif msg_type == "ae_keys_ok":
            self._mark_pending(src, body)
        elif msg_type == "error":
            # A batch refused as malformed is done with: waiting for an ack that never
            # comes would hold its keys pending, and anti-entropy with the peer, forever.
            # Any other error (a commit that failed there) leaves it to be sent again.
            if type(in_reply_to) is int and body.get("code") == ErrorCode.MALFORMED_REQUEST:
                self.tracker.acked(src, in_reply_to)
            if self._may_log(src):
                log.warning("peer %s refused a message: %s", src, body.get("text"))

    # -- merges this node cannot apply ------------------------------------------------------

    def merge_refused(self, src: str | None, keyspace: str, key: Any, reason: str) -> None:
        """Count and log (at most every few seconds per sender) a peer's key we refused."""
        if src in self.refused_merges:
            self.refused_merges[src] += 1
        if self._may_log(src):
            log.warning("refused %s key %r from %s: %s", keyspace, key, src, reason)

    def _may_log(self, src: str | None) -> bool:
        now = self.clock()
        last, unlogged = self._refusal_logged.get(src, (float("-inf"), 0))
        if now - last < REFUSAL_LOG_EVERY_S:
            self._refusal_logged[src] = (last, unlogged + 1)
            return False
        if unlogged:
            log.warning("%d more refusals involving %s were not logged", unlogged, src)
        if len(self._refusal_logged) > 4 * len(self.peers) + 16:
            self._refusal_logged.clear()  # senders that are not peers: keep the map small
        self._refusal_logged[src] = (now, 0)
        return True

    # -- anti-entropy ----------------------------------------------------------------------

    def start_anti_entropy(self) -> None:
        """Compare digests with a connected peer marked for repair, or else the next one.

        The next one must owe us no deltas: while deltas to a peer are still
        pending the digests differ anyway, and repairing then would only send
        again what gossip is already sending.  A peer marked for repair (its
        pending keys went over the bound) goes first once gossip to it is within
        one slice of caught up, which a steady stream of writes may never go below.
        """
        if not self._digests_ready():
            return
        tracker = self.tracker
        connected = [p for p in self.peers if p in self.connected]
        repair = [
            p
            for p in connected
            if tracker.needs_repair(p) and tracker.pending(p) <= self.keys_per_slice
        ]
        if repair:
            peer = repair[0]
            tracker.repair_started(peer)
        else:
            idle = [p for p in connected if tracker.pending(p) == 0]
            if not idle:
                return
            peer = idle[self._next_ae_peer % len(idle)]
            self._next_ae_peer += 1
        roots = {ks: digest.root() for ks, digest in self.digests.items()}
        self.send(peer, {"type": "ae_roots", "roots": roots})

    def answer_roots(self, body: dict[str, Any]) -> dict[str, Any]:
        """A peer's roots: our bucket hashes for each keyspace where they differ."""
        roots = require_object(body.get("roots"), "field 'roots'")
        if not self._digests_ready():
            return {"type": "ae_roots_ok", "buckets": {}}  # not yet: a later round compares
        buckets = {
            ks: digest.buckets()
            for ks, digest in self.digests.items()
            if roots.get(ks) != digest.root()
        }
        return {"type": "ae_roots_ok", "buckets": buckets}

    def _send_keys(self, peer: str, body: dict[str, Any]) -> None:
        theirs = body.get("buckets")
        if not isinstance(theirs, dict):
            return
        for keyspace, their_buckets in theirs.items():
            digest = self.digests.get(keyspace)
            if digest is None or not isinstance(their_buckets, list):
                continue
            differing = differing_buckets(digest.buckets(), their_buckets)
            for group, keys in _bucket_groups(digest, differing, KEYS_PER_AE_MESSAGE):
                body = {"type": "ae_keys", "keyspace": keyspace, "buckets": group, "keys": keys}
                self.send(peer, body)

    def answer_keys(self, src: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """A peer's keys of some buckets: queue ours that differ for it, ask for the rest."""
        keyspace = require_str(body, "keyspace")
        digest = self.digests.get(keyspace)
        if digest is None:
            raise Malformed(f"unknown keyspace {keyspace!r}")
        raw_buckets = require_list(body.get("buckets"), "field 'buckets'")
        buckets = [b for b in raw_buckets if type(b) is int]
        theirs = require_object(body.get("keys"), "field 'keys'")
        push, pull = compare_keys(digest.keys_in(buckets), theirs)
        if src in self.peers:
            for key in push:
                self._queue(src, keyspace, key)
        return {"type": "ae_keys_ok", "keyspace": keyspace, "pull": pull}

    def _mark_pending(self, peer: str, body: dict[str, Any]) -> None:
        keyspace = body.get("keyspace")
        pull = body.get("pull")
        if keyspace not in self.digests or not isinstance(pull, list):
            return
        for key in pull:
            if isinstance(key, str):
                self._queue(peer, keyspace, key)

    def _queue(self, peer: str, keyspace: str, key: str) -> None:
        self.tracker.mark(peer, (keyspace, key))

    # -- status -------------------------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        now = self.clock()
        return [
            {
                "id": peer,
                "connected": peer in self.connected,
                "last_ack_age_ms": (
                    None if peer not in self.last_ack else round((now - self.last_ack[peer]) * 1000)
                ),
                "pending": self.tracker.pending(peer),
                "dropped_to_repair": self.tracker.dropped(peer),
                "refused_merges": self.refused_merges[peer],
                "ae_rounds": self.ae_rounds[peer],
            }
            for peer in self.peers
        ]


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


def _split_siblings(key: str, field: str, siblings: list[Any], max_bytes: int) -> list[bytes]:
    """`{key, <field>}` deltas that together carry every sibling, each under `max_bytes`.

    A single sibling over the bound makes a delta of its own.
    """
    head = orjson.dumps({"key": key})[:-1] + b',"' + field.encode() + b'":['
    parts: list[bytes] = []
    group: list[bytes] = []
    size = len(head) + 2
    for sibling in siblings:
        encoded = orjson.dumps(sibling)
        if group and size + len(encoded) + 1 > max_bytes:
            parts.append(head + b",".join(group) + b"]}")
            group, size = [], len(head) + 2
        group.append(encoded)
        size += len(encoded) + 1
    parts.append(head + b",".join(group) + b"]}")
    return parts
