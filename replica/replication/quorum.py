"""Quorum writes and reads: waiting for peers' acknowledgements and answers.

A write at `w` waits until `w - 1` peers hold it durably: a peer's
`<type>_merge_ok` to a message that carried the key at a delta-tracker
sequence number at or above the write's (peers acknowledge a merge only
after their own commit).  A read at `r` asks every connected replica of the
key for its state (`quorum_read`), merges each answer into the local
keyspace as it arrives, and is done once `r - 1` peers answered; afterwards
`repair` sends the merged state to each peer that answered with less.

Either wait ends with a failure text when `request_timeout_ms` passes first;
nothing is ever undone.  Memory is bounded by the waits of requests whose
replies are held, and every wait ends at its timeout.

The replica set of a key is `replicas`: every node of the cluster, kept behind
one function so that a placement scheme can replace it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from replica.crdt.malformed import Malformed
from replica.crdt.registry import BY_NAME
from replica.keyspaces import Keyspaces
from replica.replication.delta_tracker import KeyRef
from replica.replication.pending import Pending

log = logging.getLogger("replica.replication.quorum")

DEFAULT_REQUEST_TIMEOUT_MS = 2000
NAMED_SIZES = ("one", "quorum", "all")
READ_REQUEST = "quorum_read"
READ_ANSWER = "quorum_read_ok"

Send = Callable[[str, dict[str, Any]], bool]
"""Number (`msg_id`, set in the body) and send one message body to a peer; False when the
link cannot take it."""


def replicas(node_ids: Sequence[str], keyspace: str, key: str) -> list[str]:
    """The nodes that hold `key`: every node of the cluster."""
    return list(node_ids)


def quorum_size(value: Any, name: str, cluster_size: int) -> int:
    """How many nodes `w` or `r` asks for: 1..cluster size, "one", "quorum" or "all".

    Raises `Malformed` naming the field for anything else, or for an integer
    above the cluster size.
    """
    if type(value) is int:
        if 1 <= value <= cluster_size:
            return value
        raise Malformed(
            f"field {name!r} must be from 1 to the cluster size ({cluster_size}), not {value}"
        )
    if value == "one":
        return 1
    if value == "quorum":
        return cluster_size // 2 + 1
    if value == "all":
        return cluster_size
    raise Malformed(
        f"field {name!r} must be an integer from 1 to {cluster_size}, "
        f'"one", "quorum" or "all", not {value!r}'
    )


@dataclass(slots=True, eq=False)
class WriteWait:
    """One write waiting for `needed` peers to hold its key at `seq` or later."""

    ref: KeyRef
    seq: int
    needed: int
    future: Pending[str | None]
    """None once enough peers hold it; else the failure text."""
    acked: set[str] = field(default_factory=set)
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True, eq=False)
class ReadWait:
    """One read waiting for `needed` peers' states of a key."""

    keyspace: str
    key: str
    needed: int
    future: Pending[str | None]
    """None once enough peers answered; else the failure text."""
    asked: list[tuple[str, int]] = field(default_factory=list)
    """(peer, msg_id) of each request it sent."""
    answers: dict[str, Any] = field(default_factory=dict)
    """Peer -> the state it answered (decoded; None for an absent key)."""
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class QuorumCounts:
    """Quorum requests that ended unconfirmed, and repairs sent, since the node started."""

    unavailable: int = 0
    """Fewer than `w`/`r` nodes connected (error 11)."""
    timeouts: int = 0
    """Too few acknowledgements or answers in time (error 0)."""
    read_repairs: int = 0


class Quorums:
    """The waits of one node's quorum writes and reads."""

    def __init__(self, keyspaces: Keyspaces, send: Send) -> None:
        self.keyspaces = keyspaces
        self.send = send
        self.writes: dict[KeyRef, list[WriteWait]] = {}
        self.reads: dict[tuple[str, int], ReadWait] = {}  # (peer, msg_id) -> its read
        self.counts = QuorumCounts()

    @property
    def waiting(self) -> bool:
        return bool(self.writes)

    # -- writes ------------------------------------------------------------------------

    def wait_write(self, ref: KeyRef, seq: int, needed: int, timeout_ms: int) -> WriteWait:
        loop = asyncio.get_running_loop()
        wait = WriteWait(ref, seq, needed, Pending())
        self.writes.setdefault(ref, []).append(wait)
        wait.timer = loop.call_later(timeout_ms / 1000, self._write_expired, wait, timeout_ms)
        return wait

    def acked(self, peer: str, items: dict[KeyRef, int]) -> bool:
        """`peer` acknowledged a message that carried these keys at these sequence numbers.

        True when a write waits for a later state of one of them than it carried.
        """
        writes = self.writes
        behind = False
        for ref, seq in items.items():
            waits = writes.get(ref)
            if waits is None:
                continue
            for wait in list(waits):
                if seq < wait.seq:
                    behind = True
                    continue
                wait.acked.add(peer)
                if len(wait.acked) >= wait.needed:
                    self._end_write(wait, None)
        return behind

    def _write_expired(self, wait: WriteWait, timeout_ms: int) -> None:
        self.counts.timeouts += 1
        held, total = len(wait.acked) + 1, wait.needed + 1
        self._end_write(
            wait,
            f"{held} of {total} replicas acknowledged within {timeout_ms} ms; "
            "the write is kept and will spread",
        )

    def _end_write(self, wait: WriteWait, failure: str | None) -> None:
        waits = self.writes.get(wait.ref, [])
        if wait in waits:
            waits.remove(wait)
            if not waits:
                del self.writes[wait.ref]
        if wait.timer is not None:
            wait.timer.cancel()
        if not wait.future.done():
            wait.future.set_result(failure)

    # -- reads -------------------------------------------------------------------------

    def ask(
        self, keyspace: str, key: str, peers: list[str], needed: int, timeout_ms: int
    ) -> ReadWait:
        """Ask every one of `peers` for the key's state; done once `needed` answered."""
        loop = asyncio.get_running_loop()
        wait = ReadWait(keyspace, key, needed, Pending())
        for peer in peers:
            body: dict[str, Any] = {"type": READ_REQUEST, "keyspace": keyspace, "key": key}
            if self.send(peer, body):
                asked = (peer, body["msg_id"])
                wait.asked.append(asked)
                self.reads[asked] = wait
        wait.timer = loop.call_later(timeout_ms / 1000, self._read_expired, wait, timeout_ms)
        return wait

    def answered(self, peer: str, body: dict[str, Any]) -> None:
        """A peer's `quorum_read_ok`: merge its state here and count it."""
        in_reply_to = body.get("in_reply_to")
        if type(in_reply_to) is not int:
            return
        wait = self.reads.pop((peer, in_reply_to), None)
        if wait is None or wait.future.done():
            return
        data_type = BY_NAME[wait.keyspace]
        raw = body.get("state")
        try:
            state = None if raw is None else data_type.from_wire(raw)
        except Exception as exc:  # a peer's bad answer counts as no answer
            log.warning("peer %s answered a quorum read with a bad state: %s", peer, exc)
            return
        if state is not None:
            self.keyspaces.merge(data_type, wait.key, state)
        wait.answers[peer] = state
        if len(wait.answers) >= wait.needed:
            self._end_read(wait, None)

    def reading(self) -> set[KeyRef]:
        """The keys a quorum read here waits on: their answers are peers' states in flight."""
        return {(wait.keyspace, wait.key) for wait in self.reads.values()}

    def refused(self, peer: str, in_reply_to: Any) -> None:
        """A peer answered a read with an error: it will not answer it otherwise."""
        if type(in_reply_to) is int:
            self.reads.pop((peer, in_reply_to), None)

    def _read_expired(self, wait: ReadWait, timeout_ms: int) -> None:
        self.counts.timeouts += 1
        answered, total = len(wait.answers) + 1, wait.needed + 1
        self._end_read(wait, f"{answered} of {total} replicas answered within {timeout_ms} ms")

    def _end_read(self, wait: ReadWait, failure: str | None) -> None:
        for asked in wait.asked:
            self.reads.pop(asked, None)
        if wait.timer is not None:
            wait.timer.cancel()
        if not wait.future.done():
            wait.future.set_result(failure)

    def repair(self, wait: ReadWait) -> None:
        """Send the merged state to each peer that answered with less (a normal merge)."""
        data_type = BY_NAME[wait.keyspace]
        merged = self.keyspaces.states[wait.keyspace].get(wait.key)
        if merged is None:
            return
        for peer, state in wait.answers.items():
            if state is not None and state.merge(merged) == state:
                continue
            body = {
                "type": data_type.merge_type,
                "key": wait.key,
                data_type.state_field: merged.to_wire(),
            }
            if self.send(peer, body):
                self.counts.read_repairs += 1

    def status(self) -> dict[str, int]:
        counts = self.counts
        return {
            "unavailable": counts.unavailable,
            "timeouts": counts.timeouts,
            "read_repairs": counts.read_repairs,
            "writes_waiting": sum(map(len, self.writes.values())),
        }
