"""Per-request `w` and `r`: which requests take them, and how the node waits for them.

`QUORUM_REQUESTS` is the one table of the requests that write or read one
key (its message type -> the field it takes, `w` or `r`, and its keyspace);
a new one is one line there.  Every other message type runs as it always has.

A write runs exactly as at `w = 1`, so it is kept whatever happens next; its
key is then pushed to every connected peer at once, and its reply waits until
`w` nodes (this one included) hold it durably.  A read at `r > 1` asks the
connected replicas for their states, merges `r - 1` answers into this node's
keyspace, and, once the merge is durable here, answers through its normal
handler and repairs the peers that answered with less.  Fewer than `w`/`r`
nodes connected is error 11 at once; too few answers within
`request_timeout_ms` is error 0.  Both mean "not confirmed", never "not
written".

Such a reply is `Deferred` (a `Pending`): the transport holds it, in order,
until it resolves to the reply (an error reply when the quorum failed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from replica.crdt.malformed import Malformed
from replica.durable.durability import barrier_failure
from replica.errors import ErrorCode
from replica.node.context import Body, Handler
from replica.replication.pending import Pending
from replica.replication.quorum import ReadWait, quorum_size, replicas
from replica.replication.replicator import Replicator

log = logging.getLogger("replica.node.quorums")

WRITE, READ = "w", "r"

QUORUM_REQUESTS: dict[str, tuple[str, str]] = {
    "mv_write": (WRITE, "mv"),
    "kv_put": (WRITE, "kv"),
    "kv_resolve": (WRITE, "kv"),
    "lww_write": (WRITE, "lww"),
    "mvcc_put": (WRITE, "mvcc"),
    "counter_add": (WRITE, "counter"),
    "mv_delete": (WRITE, "mv"),
    "kv_delete": (WRITE, "kv"),
    "lww_delete": (WRITE, "lww"),
    "mvcc_delete": (WRITE, "mvcc"),
    "counter_delete": (WRITE, "counter"),
    "mv_read": (READ, "mv"),
    "kv_get": (READ, "kv"),
    "lww_read": (READ, "lww"),
    "mvcc_get": (READ, "mvcc"),
    "counter_read": (READ, "counter"),
}
"""Message type -> (its quorum field, its keyspace): every request that writes or reads one key."""

Deferred = Pending
"""A reply that is not ready yet: it resolves to the reply (an error reply when the quorum
failed), and runs its callbacks at once when it does."""


class QuorumNode(Protocol):
    """What the quorum path uses of the node."""

    @property
    def node_id(self) -> str | None: ...

    @property
    def node_ids(self) -> list[str]: ...

    @property
    def replicator(self) -> Replicator | None: ...

    @property
    def quorum_defaults(self) -> tuple[Any, Any, int]:
        """The cluster's `w`, `r` and `request_timeout_ms`."""

    def commit_barrier(self) -> asyncio.Future[None] | None:
        """None when every change so far is durable (or replies are not held for it)."""

    def run(self, handler: Handler, body: Body, src: str | None) -> Body | None: ...


def coordinate(
    node: QuorumNode, handler: Handler, body: Body, src: str | None
) -> Body | Deferred[Body | None] | None:
    """Run a request under its `w` or `r`: its reply, or one deferred until the quorum is known.

    A `w` or `r` that is not 1..cluster size, "one", "quorum" or "all" is error
    12 naming the field, and the request does not run.
    """
    entry = QUORUM_REQUESTS.get(body["type"])
    if entry is None:
        return node.run(handler, body, src)
    kind, keyspace = entry
    w, r, timeout_ms = node.quorum_defaults
    if kind not in body:
        value = w if kind == WRITE else r
        if value == 1:
            return node.run(handler, body, src)
    else:
        value = body[kind]
    try:
        needed = quorum_size(value, kind, max(1, len(node.node_ids)))
    except Malformed as exc:
        return _error(ErrorCode.MALFORMED_REQUEST, str(exc))
    replicator = node.replicator
    if needed == 1 or replicator is None:
        return node.run(handler, body, src)
    if kind == WRITE:
        return _write(node, replicator, handler, body, src, keyspace, needed, timeout_ms)
    return _read(node, replicator, handler, body, src, keyspace, needed, timeout_ms)


def _write(
    node: QuorumNode,
    replicator: Replicator,
    handler: Handler,
    body: Body,
    src: str | None,
    keyspace: str,
    needed: int,
    timeout_ms: int,
) -> Body | Deferred[Body | None] | None:
    tracker = replicator.tracker
    before = tracker.seq
    reply = node.run(handler, body, src)
    if reply is None or reply["type"] == "error":
        return reply
    key: str = body["key"]
    ref = (keyspace, key)
    if tracker.seq == before:  # it changed nothing: the state it saw must reach the peers
        if replicator.keyspaces.states[keyspace].get(key) is None:
            return reply  # and there is none (a delete of an absent key): nothing to hold
        tracker.changed(ref)
    unavailable = _unavailable(node, replicator, keyspace, key, needed, WRITE)
    if unavailable is not None:
        return unavailable
    wait = replicator.quorums.wait_write(ref, tracker.seq, needed - 1, timeout_ms)
    replicator.push_soon()
    return wait.future.then(lambda failure: reply if failure is None else _timeout(failure))


def _unavailable(
    node: QuorumNode, replicator: Replicator, keyspace: str, key: str, needed: int, kind: str
) -> Body | None:
    """Error 11 (counted) when fewer than `needed` replicas of the key are connected; else None."""
    connected = _connected(node, replicator, keyspace, key)
    if connected >= needed:
        return None
    replicator.quorums.counts.unavailable += 1
    kept = "; the write is kept and will spread" if kind == WRITE else ""
    return _error(
        ErrorCode.TEMPORARILY_UNAVAILABLE,
        f"{connected} of the {needed} nodes {kind} asks for are connected{kept}",
    )


def _read(
    node: QuorumNode,
    replicator: Replicator,
    handler: Handler,
    body: Body,
    src: str | None,
    keyspace: str,
    needed: int,
    timeout_ms: int,
) -> Body | Deferred[Body | None] | None:
    reply = node.run(handler, body, src)  # a read changes nothing: this checks its fields
    if reply is None or (reply["type"] == "error" and reply["code"] == ErrorCode.MALFORMED_REQUEST):
        return reply
    key: str = body["key"]
    unavailable = _unavailable(node, replicator, keyspace, key, needed, READ)
    if unavailable is not None:
        return unavailable
    peers = _peers(node, replicator, keyspace, key)
    wait = replicator.quorums.ask(keyspace, key, peers, needed - 1, timeout_ms)
    out: Deferred[Body | None] = Pending()

    def answered(future: Pending[str | None]) -> None:
        failure = future.result()
        if failure is not None:
            out.set_result(_timeout(failure))
            return
        barrier = node.commit_barrier()  # what the answers merged here is durable first
        if barrier is None:
            finish(None)
        else:
            barrier.add_done_callback(finish)

    def finish(barrier: asyncio.Future[None] | None) -> None:
        try:
            out.set_result(_answer(node, replicator, wait, barrier, handler, body, src))
        except Exception:
            log.exception("finishing a quorum read failed")
            out.set_result(_error(ErrorCode.CRASH, "internal error"))

    wait.future.add_done_callback(answered)
    return out


def _answer(
    node: QuorumNode,
    replicator: Replicator,
    wait: ReadWait,
    barrier: asyncio.Future[None] | None,
    handler: Handler,
    body: Body,
    src: str | None,
) -> Body | None:
    failure = barrier_failure(barrier)
    if failure is not None:
        return _error(ErrorCode.CRASH, f"read not durable: {failure}")
    replicator.quorums.repair(wait)
    return node.run(handler, body, src)


def _peers(node: QuorumNode, replicator: Replicator, keyspace: str, key: str) -> list[str]:
    me, connected = node.node_id, replicator.connected
    return [n for n in replicas(node.node_ids, keyspace, key) if n != me and n in connected]


def _connected(node: QuorumNode, replicator: Replicator, keyspace: str, key: str) -> int:
    """Replicas of the key connected now, this node included."""
    return 1 + len(_peers(node, replicator, keyspace, key))


def _timeout(failure: str) -> Body:
    return _error(ErrorCode.TIMEOUT, failure)


def _error(code: ErrorCode, text: str) -> Body:
    return {"type": "error", "code": int(code), "text": text}
