"""Replication: delta gossip to every peer, and anti-entropy to repair what it missed.

The replicator listens to the keyspaces' change notifications.  Each gossip
tick it asks the `DeltaTracker` which keys each connected peer still needs and
sends their current states as `<type>_merge` batches bounded in bytes; peers
acknowledge with `<type>_merge_ok`.  Every few ticks it compares digests with
one peer (`replica.replication.anti_entropy`), which marks what differs as
pending, so repair ships through the same gossip.

It is built from what it needs (the node id, the keyspaces, the node's
message numbering) and sends through an outbox the peer links or the stdio
transport provide: it never sees the node that routes messages.

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
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import orjson

from replica.crdt.registry import BY_NAME, TYPES
from replica.errors import ErrorCode
from replica.keyspaces import Keyspaces
from replica.replication import delta_compression
from replica.replication.anti_entropy import AntiEntropy
from replica.replication.delta_tracker import MAX_PENDING_KEYS, DeltaTracker, KeyRef
from replica.replication.quorum import READ_ANSWER, Quorums
from replica.replication.sibling_split import split_siblings
from replica.replication.tombstones import ASK, GONE, TombstoneCollector, by_keyspace, chunks

log = logging.getLogger("replica.replication.replicator")

MERGE_ACKS = {f"{t.merge_type}_ok" for t in TYPES}
REFUSAL_LOG_EVERY_S = 10.0

Outbox = Callable[[str, bytes], bool]
"""Hand one encoded line to peer `dest`; False when it cannot take it now."""

Snapshot = tuple[int, Any]
"""(the tracker's sequence number when a key's state was taken, that stored state)."""


class DurableStates(Protocol):
    """What replication asks of durable storage: which keys are on disk, and a barrier."""

    def settled(self, keyspace: str, key: str) -> bool: ...

    def barrier(self) -> asyncio.Future[None] | None: ...

    @property
    def holds_replies(self) -> bool:
        """True in "sync" mode: a state sent is on disk; False in "async"."""


class Replicator:
    """One node's outgoing replication state: pending deltas, digests, peer liveness."""

    def __init__(
        self,
        node_id: str,
        peers: Iterable[str],
        keyspaces: Keyspaces,
        msg_ids: Iterator[int],
        *,
        max_message_bytes: int = 256 * 1024,
        keys_per_slice: int = 1024,
        resend_after: float = 3.0,
        anti_entropy_every: int = 10,
        max_pending: int = MAX_PENDING_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id = node_id
        self.keyspaces = keyspaces
        self.msg_ids = msg_ids
        self.durability: DurableStates | None = None
        """None for a node in memory: nothing is held back."""
        self.peers = [p for p in peers if p != node_id]
        self.tracker = DeltaTracker(self.peers, resend_after=resend_after, max_pending=max_pending)
        self.anti_entropy = AntiEntropy(keyspaces, self.peers, self.tracker, self.send)
        self.digests = self.anti_entropy.digests
        self.max_message_bytes = max_message_bytes
        self.keys_per_slice = keys_per_slice
        self.anti_entropy_every = anti_entropy_every
        self.clock = clock
        self.outbox: Outbox = lambda dest, line: False
        self.connected: set[str] = set()
        self.last_ack: dict[str, float] = {}
        self.bytes_sent = 0
        self.refused_merges = dict.fromkeys(self.peers, 0)  # keys of theirs we could not apply
        self._refusal_logged: dict[str | None, tuple[float, int]] = {}  # -> (when, unlogged)
        self._ticks = 0
        self._repair_due = False
        # Keys held back until durable: states taken while unsettled, waiting for a
        # barrier; and states a barrier made durable, shippable while the key is not.
        self._awaiting: dict[KeyRef, Snapshot] = {}
        self._durable: dict[KeyRef, Snapshot] = {}
        self.quorums = Quorums(keyspaces, self.send)
        self.tombstones = TombstoneCollector(keyspaces, self.peers, clock=clock)
        self._push_soon: asyncio.Handle | None = None
        keyspaces.listeners.append(self._changed)
        keyspaces.tombstone_listeners.append(self._tombstone_changed)

    # -- change notifications ---------------------------------------------------------

    def _changed(self, keyspace: str, key: str, local: bool) -> None:
        self.anti_entropy.changed(keyspace, key)
        if local:
            self.tracker.changed((keyspace, key))

    def _tombstone_changed(self, keyspace: str, key: str, local: bool) -> None:
        # a merge that leaves only a tombstone goes to every peer too: their confirmations
        if self.tombstones.changed(keyspace, key) and not local:
            self.tracker.changed((keyspace, key))

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
        self.anti_entropy.refresh()
        self._forget_settled()
        self.collect_tombstones()
        if self.peers and (self._repair_due or self._ticks % self.anti_entropy_every == 0):
            self._repair_due = False
            self.start_anti_entropy()

    def start_anti_entropy(self) -> None:
        connected = [p for p in self.peers if p in self.connected]
        self.anti_entropy.start(connected, self.keys_per_slice)

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
        if self._awaiting:
            self._await_durable()
        return more

    def push_soon(self) -> None:
        """Push pending deltas on the next loop turn, once however often asked: quorum writes
        wait for them, so they do not wait for the gossip tick."""
        if self._push_soon is None:
            self._push_soon = asyncio.get_running_loop().call_soon(self._push_now)

    def _push_now(self) -> None:
        self._push_soon = None
        try:
            more = self.push()
        except Exception:
            log.exception("pushing deltas failed")
            return
        if more and self.quorums.waiting:
            self.push_soon()

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
        data_type = BY_NAME[keyspace]
        field = data_type.state_field
        bound = self.max_message_bytes
        batch: list[tuple[KeyRef, int]] = []
        chunks: list[bytes] = []
        size = 0
        for ref, seq in items:
            shippable = self._shippable(ref, seq)
            if shippable is None:
                if ref[1] not in self.keyspaces.states[keyspace]:
                    self.tracker.discard(peer, ref)  # dropped: nothing is left to send
                continue
            stored, seq = shippable
            key = ref[1]
            state = stored.to_wire()
            chunk = orjson.dumps({"key": key, field: state})
            if len(chunk) > bound and data_type.has_siblings and len(state) > 1:
                *parts, chunk = split_siblings(key, field, state, bound)
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

    # -- tombstone collection (`replica.replication.tombstones`) -----------------------------

    def collect_tombstones(self) -> int:
        """Drop the tombstones every node confirmed, ask for what is missing; how many went."""
        collector = self.tombstones
        if not collector.candidates or not self._collecting():
            return 0
        reading = self.quorums.reading()
        owes, durability = self.tracker.owes, self.durability

        def held_back(ref: KeyRef) -> bool:
            unsettled = durability is not None and not durability.settled(*ref)
            return unsettled or owes(ref) or ref in reading

        drop, asks = collector.sweep(self.keys_per_slice, held_back, self.connected)
        for ref in drop:
            self._durable.pop(ref, None)
            self._awaiting.pop(ref, None)
        dropped = collector.drop(drop)
        for peer, refs in asks.items():
            for chunk in chunks(refs):
                self.send(peer, {"type": ASK, "keys": by_keyspace(chunk)})
        return dropped

    def tombstones_asked(self, src: str | None, keys: dict[str, list[str]]) -> None:
        """A peer asks us to confirm: send it the keys we hold, and name those we dropped."""
        if src not in self.peers or not self._collecting():
            return
        states, gone = self.keyspaces.states, []
        for keyspace, names in keys.items():
            held = states[keyspace]
            for key in names:
                if key in held:
                    self.tracker.mark(src, (keyspace, key))
                elif self.keyspaces.removed(keyspace, key):
                    gone.append((keyspace, key))
        for chunk in chunks(gone):
            self.send(src, {"type": GONE, "keys": by_keyspace(chunk)})

    def _collecting(self) -> bool:
        """In "async" durability a node could confirm a tombstone it then loses in a crash."""
        if not self.tombstones.enabled:
            return False
        return self.durability is None or self.durability.holds_replies

    # -- only durable states leave the node ---------------------------------------------------

    def _shippable(self, ref: KeyRef, seq: int) -> tuple[Any, int] | None:
        """The stored state to send for a pending key, and the sequence number it covers.

        The current state when it is durable; else the latest durable snapshot,
        which clears the key only if it covers the change it is pending for;
        else None: the key waits.
        """
        current = self.keyspaces.states[ref[0]].get(ref[1])
        if current is None:
            return None
        durability = self.durability
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
        """Take a barrier: once it resolves, every state now in `_awaiting` is on disk.

        States taken while it is on its way may hold changes after it, so they
        wait for a barrier of their own (barriers taken between two commits
        share one future, so this costs no commit).
        """
        durability = self.durability
        barrier = None if durability is None else durability.barrier()
        covered, self._awaiting = self._awaiting, {}
        if barrier is None:
            self._durable.update(covered)
            return
        barrier.add_done_callback(lambda done: self._barrier_done(done, covered))

    def _barrier_done(self, barrier: asyncio.Future[None], covered: dict[KeyRef, Snapshot]) -> None:
        if not barrier.cancelled() and barrier.exception() is None:
            self._durable.update(covered)
            if self.quorums.waiting:
                self._push_now()  # what quorum writes wait for leaves now
        # else the commit failed or stalled: the keys are taken again at a later push

    def _forget_settled(self) -> None:
        """Drop durable snapshots of keys whose current state is durable again."""
        durability = self.durability
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
        msg_id = next(self.msg_ids)
        head = orjson.dumps({"src": self.node_id, "dest": peer})[:-1]
        body_head = orjson.dumps({"type": BY_NAME[keyspace].merge_type, "msg_id": msg_id})[:-1]
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

    def envelope(self, peer: str, body: dict[str, Any]) -> bytes:
        """Number a message body of ours to `peer` and encode it as one line."""
        body["msg_id"] = next(self.msg_ids)
        envelope = {"src": self.node_id, "dest": peer, "body": body}
        return orjson.dumps(envelope, option=orjson.OPT_APPEND_NEWLINE)

    def send(self, peer: str, body: dict[str, Any]) -> bool:
        """Hand a message body of ours to the outbox for `peer`."""
        line = self.envelope(peer, body)
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
                quorums = self.quorums
                behind = quorums.waiting and quorums.acked(
                    src, self.tracker.carried(src, in_reply_to)
                )
                self.tracker.acked(src, in_reply_to)
                self.last_ack[src] = self.clock()
                if behind:
                    self.push_soon()  # a key changed while in flight goes again now
        elif msg_type == READ_ANSWER:
            self.quorums.answered(src, body)
        elif msg_type == "ae_roots_ok":
            self.anti_entropy.roots_answered(src, body)
        elif msg_type == "ae_keys_ok":
            self.anti_entropy.keys_answered(src, body)
        elif msg_type == "error":
            self.quorums.refused(src, in_reply_to)
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

    def answer_roots(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.anti_entropy.answer_roots(body)

    def answer_keys(self, src: str | None, body: dict[str, Any]) -> dict[str, Any]:
        return self.anti_entropy.answer_keys(src, body)

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
                "ae_rounds": self.anti_entropy.rounds[peer],
            }
            for peer in self.peers
        ]
