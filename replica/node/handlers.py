"""Request handlers: one function per message type, named after it.

A handler validates the body's fields (raising `Malformed` before touching any
state, so a bad request changes nothing), calls the node's keyspaces, and
returns the reply body without `in_reply_to` and `msg_id`, which the node adds.
Merge messages from peers return None when they carry no `msg_id`: only
requests that can be matched to a reply are acknowledged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from replica.crdt import version_vector
from replica.crdt.clocked_siblings import ClockedSiblings, NotCovered, clock_from_wire
from replica.crdt.lww import LWWRegister
from replica.crdt.malformed import (
    MAX_COUNTER,
    Malformed,
    optional_count,
    require_count,
    require_field,
    require_list,
    require_object,
    require_str,
    require_value,
)
from replica.crdt.mv_register import MVRegister, Sibling
from replica.crdt.mvcc import TimestampConflict, Version, VersionChain
from replica.errors import ErrorCode, RequestError
from replica.keyspaces import KV, LWW, MV, MVCC, TooFarAhead
from replica.replication import delta_compression, peer_handshake

if TYPE_CHECKING:
    from replica.node.router import Node
    from replica.replication.replicator import Replicator

Body = dict[str, Any]
State = TypeVar("State")

MAX_INFLATED_BYTES = 64 << 20  # a compressed batch never inflates past this


def init(node: Node, body: Body, src: str | None) -> Body:
    node_id = require_str(body, "node_id")
    node_ids = require_list(body.get("node_ids"), "field 'node_ids'")
    if not all(isinstance(n, str) for n in node_ids):
        raise Malformed("field 'node_ids' must be an array of strings")
    if node.node_id is None:
        node.bind(node_id, node_ids)
    elif node_id != node.node_id:
        raise RequestError(
            ErrorCode.PRECONDITION_FAILED, f"this node is {node.node_id!r}, not {node_id!r}"
        )
    return {"type": "init_ok"}


# -- MV registers -----------------------------------------------------------------


def mv_write(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=node.integers_checked)
    raw_context = body.get("context")
    context = (
        None
        if raw_context is None
        else version_vector.from_wire(raw_context, "context", MAX_COUNTER)
    )
    register, sibling = node.keyspaces.mv_write(key, value, context)
    values, register_context = register.read_view()
    # Alone, the new sibling's vclock is the register's context: one dict serves both.
    vclock = register_context if len(values) == 1 else sibling.vclock()
    return {"type": "mv_write_ok", "vclock": vclock, "context": register_context, "values": values}


def mv_read(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    node.shown(MV, key)
    register = node.keyspaces.mv.get(key)
    if register is None:
        return {"type": "mv_read_ok", "values": [], "context": {}}
    values, context = register.read_view()
    return {"type": "mv_read_ok", "values": values, "context": context}


def mv_merge(node: Node, body: Body, src: str | None) -> Body | None:
    """Accepts whole sibling sets, a batch of them, or the seed's single dot-less entry."""
    if "entry" in body:
        key = require_str(body, "key")
        node.keyspaces.mv_merge(key, MVRegister.of([Sibling.from_entry(body["entry"], src)]))
    else:
        _merge_each(node, body, src, "siblings", MVRegister.from_wire, node.keyspaces.mv_merge)
    return _merge_ack(body)


# -- client-clocked KV --------------------------------------------------------------


def kv_put(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=node.integers_checked)
    clock = clock_from_wire(require_field(body, "clock"), MAX_COUNTER)
    result = node.keyspaces.kv_put(key, value, clock)
    reply: Body = {"type": "kv_put_ok", "status": result.status}
    if result.status == "conflict":
        reply["siblings"] = result.siblings
    elif result.status == "rejected":
        reply["reason"] = "stale"
    return reply


def kv_get(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    node.shown(KV, key)
    siblings = node.keyspaces.kv.get(key)
    return {"type": "kv_get_ok", "values": [] if siblings is None else siblings.to_wire()}


def kv_resolve(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=node.integers_checked)
    clock = clock_from_wire(require_field(body, "clock"), MAX_COUNTER)
    try:
        node.keyspaces.kv_resolve(key, value, clock)
    except NotCovered as exc:
        clocks = ", ".join(str(list(c)) for c in exc.uncovered)
        raise RequestError(
            ErrorCode.PRECONDITION_FAILED,
            f"clock {list(clock)} does not cover sibling clocks {clocks}",
        ) from None
    return {"type": "kv_resolve_ok", "status": "resolved"}


def kv_merge(node: Node, body: Body, src: str | None) -> Body | None:
    _merge_each(node, body, src, "siblings", ClockedSiblings.from_wire, node.keyspaces.kv_merge)
    return _merge_ack(body)


# -- MVCC ---------------------------------------------------------------------------


def mvcc_put(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=node.integers_checked)
    timestamp = optional_count(body, "timestamp")
    try:
        version, ts = node.keyspaces.mvcc_put(key, value, timestamp)
    except TimestampConflict as exc:
        raise RequestError(
            ErrorCode.TXN_CONFLICT,
            f"timestamp {timestamp} is at or below the key's newest version ({exc.newest})",
        ) from None
    except TooFarAhead as exc:
        raise _too_far_ahead(node, exc) from None
    return {"type": "mvcc_put_ok", "version": version, "timestamp": ts}


def mvcc_get(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    read_timestamp = optional_count(body, "read_timestamp")
    _check_horizon(node, read_timestamp)
    node.shown(MVCC, key)
    found = node.keyspaces.mvcc_read(key, read_timestamp)
    if found is None:
        at = "" if read_timestamp is None else f" at or before timestamp {read_timestamp}"
        raise RequestError(ErrorCode.KEY_DOES_NOT_EXIST, f"no version of {key!r}{at}")
    return {"type": "mvcc_get_ok", **_version_view(*found)}


def mvcc_snapshot(node: Node, body: Body, src: str | None) -> Body:
    keys = require_list(body.get("keys"), "field 'keys'")
    if not all(isinstance(k, str) for k in keys):
        raise Malformed("field 'keys' must be an array of strings")
    read_timestamp = require_count(body.get("read_timestamp"), "field 'read_timestamp'")
    _check_horizon(node, read_timestamp)
    values: Body = {}
    for key in keys:
        node.shown(MVCC, key)
        found = node.keyspaces.mvcc_read(key, read_timestamp)
        values[key] = None if found is None else _version_view(*found)
    return {"type": "mvcc_snapshot_ok", "values": values}


def mvcc_gc(node: Node, body: Body, src: str | None) -> Body:
    before = require_count(body.get("before"), "field 'before'")
    removed = node.keyspaces.mvcc_gc(before)
    return {"type": "mvcc_gc_ok", "removed": removed, "horizon": node.keyspaces.mvcc_horizon}


def mvcc_merge(node: Node, body: Body, src: str | None) -> Body | None:
    _merge_each(node, body, src, "state", VersionChain.from_wire, node.keyspaces.mvcc_merge)
    return _merge_ack(body)


def _check_horizon(node: Node, read_timestamp: int | None) -> None:
    horizon = node.keyspaces.mvcc_horizon
    if read_timestamp is not None and read_timestamp < horizon:
        raise RequestError(
            ErrorCode.PRECONDITION_FAILED,
            f"read_timestamp {read_timestamp} is below the garbage-collection horizon {horizon}",
        )


def _too_far_ahead(node: Node, exc: TooFarAhead) -> RequestError:
    skew = node.keyspaces.max_clock_skew_ms
    return RequestError(
        ErrorCode.PRECONDITION_FAILED,
        f"timestamp {exc.timestamp} is more than max_clock_skew_ms ({skew}) ahead of "
        f"this node's hybrid clock: the largest it accepts now is {exc.bound}",
    )


def _version_view(version: Version, number: int) -> Body:
    return {"value": version.value, "version": number, "as_of_timestamp": version.timestamp}


# -- LWW registers --------------------------------------------------------------------


def lww_write(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=node.integers_checked)
    timestamp = optional_count(body, "timestamp")
    try:
        ts = node.keyspaces.lww_write(key, value, timestamp)
    except TooFarAhead as exc:
        raise _too_far_ahead(node, exc) from None
    return {"type": "lww_write_ok", "timestamp": ts, "replica": node.node_id}


def lww_read(node: Node, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    node.shown(LWW, key)
    register = node.keyspaces.lww.get(key)
    if register is None:
        raise RequestError(ErrorCode.KEY_DOES_NOT_EXIST, f"no value for {key!r}")
    return {"type": "lww_read_ok", **register.to_wire()}


def lww_merge(node: Node, body: Body, src: str | None) -> Body | None:
    _merge_each(node, body, src, "state", LWWRegister.from_wire, node.keyspaces.lww_merge)
    return _merge_ack(body)


# -- merge plumbing -------------------------------------------------------------------


def _merge_each(
    node: Node,
    body: Body,
    src: str | None,
    field: str,
    decode: Callable[[Any], State],
    merge: Callable[[str, State], None],
) -> None:
    """Apply a merge message's `{key, <field>}`, or each delta of its batch on its own.

    A single delta that cannot be decoded is refused with error 12.  In a
    batch, a delta that cannot be decoded or applied is refused for its key
    alone (logged and counted per peer in `status`); the others are applied
    and the batch is acknowledged, so one bad key never holds back the rest,
    nor leaves them pending at the sender forever.
    """
    if "deltas" not in body and "deltas_z" not in body:
        merge(require_str(body, "key"), decode(require_field(body, field)))
        return
    for item in _deltas(body):
        try:
            entry = require_object(item, "each delta")
            key = require_str(entry, "key")
            merge(key, decode(require_field(entry, field)))
        except Exception as exc:  # whatever it is, it concerns this key alone
            _refused(node, src, body, item, exc)


def _deltas(body: Body) -> list[Any]:
    """The deltas of a batch, plain or compressed; undecoded, so each is refused on its own."""
    if "deltas_z" in body:
        try:
            raw = orjson.loads(delta_compression.unpack(body["deltas_z"], MAX_INFLATED_BYTES))
        except orjson.JSONDecodeError as exc:
            raise Malformed(f"field 'deltas_z' does not hold JSON: {exc}") from None
        return require_list(raw, "field 'deltas_z'")
    return require_list(body["deltas"], "field 'deltas'")


def _refused(node: Node, src: str | None, body: Body, item: Any, exc: Exception) -> None:
    key = item.get("key") if isinstance(item, dict) else None
    reason = str(exc) if isinstance(exc, Malformed) else f"{type(exc).__name__}: {exc}"
    keyspace = str(body["type"]).removesuffix("_merge")
    if node.replicator is not None:
        node.replicator.merge_refused(src, keyspace, key, reason)


def _merge_ack(body: Body) -> Body | None:
    return None if body.get("msg_id") is None else {"type": f"{body['type']}_ok"}


# -- replication and status -------------------------------------------------------------


def peer_hello(node: Node, body: Body, src: str | None) -> Body:
    """A dialling peer's hello: accepted only when both nodes list the same cluster."""
    return peer_handshake.answer(node.node_id, node.node_ids, body)


def ae_roots(node: Node, body: Body, src: str | None) -> Body:
    return _replicator(node).answer_roots(body)


def ae_keys(node: Node, body: Body, src: str | None) -> Body:
    return _replicator(node).answer_keys(src, body)


def _replicator(node: Node) -> Replicator:
    if node.replicator is None:
        raise RequestError(ErrorCode.NOT_SUPPORTED, "this node has no peers to repair with")
    return node.replicator


def status(node: Node, body: Body, src: str | None) -> Body:
    keyspaces = node.keyspaces
    return {
        "type": "status_ok",
        "node_id": node.node_id,
        "peers": [] if node.replicator is None else node.replicator.status(),
        "keys": {
            "mv": len(keyspaces.mv),
            "kv": len(keyspaces.kv),
            "mvcc": len(keyspaces.mvcc),
            "lww": len(keyspaces.lww),
        },
        "max_siblings": {"mv": keyspaces.max_siblings(MV), "kv": keyspaces.max_siblings(KV)},
        "gossip_bytes_sent": 0 if node.replicator is None else node.replicator.bytes_sent,
        "actor": keyspaces.actor,
        "durability": _durability_status(node),
    }


def _durability_status(node: Node) -> Body:
    durability = node.durability
    if durability is None:
        return {"mode": "memory"}
    return {**durability.status(), **durability.store.status()}
