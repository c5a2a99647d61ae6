"""The one merge handler: `<type>_merge` from a peer, for every type of the registry.

A merge message carries one key's state (`{key, <state field>}`) or a batch
of them (`deltas`, or `deltas_z` compressed).  Each state is decoded by its
type's `from_wire` and merged by its type's `merge`, through
`Keyspaces.merge`; nothing here knows one type from another.

Except, for fault tests only, `without_writes_of`: what a node that loses one
peer's writes on purpose (`NodeSettings.drop_merges_from`) keeps of a merge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from replica.crdt.malformed import (
    Malformed,
    require_field,
    require_list,
    require_object,
    require_str,
)
from replica.crdt.registry import BY_MERGE_TYPE, TYPES, DataType
from replica.node.context import Body, Context, Handler
from replica.replication import delta_compression

MAX_INFLATED_BYTES = 64 << 20  # a compressed batch never inflates past this


def merge(ctx: Context, body: Body, src: str | None, data_type: DataType) -> Body | None:
    """Apply a merge message's `{key, <field>}`, or each delta of its batch on its own.

    A single delta that cannot be decoded is refused with error 12.  In a
    batch, a delta that cannot be decoded or applied is refused for its key
    alone (logged and counted per peer in `status`); the others are applied
    and the batch is acknowledged, so one bad key never holds back the rest,
    nor leaves them pending at the sender forever.
    """
    keyspaces, field, decode = ctx.keyspaces, data_type.state_field, data_type.from_wire
    replicator, peer = ctx.replicator, ctx.session.peer
    # a proven peer's state of a key holding only a tombstone here may confirm that tombstone
    # (not over stdio: a harness's network need not deliver one sender's messages in order)
    collector = None if replicator is None or peer is None else replicator.tombstones
    if "deltas" not in body and "deltas_z" not in body:
        key = require_str(body, "key")
        state = decode(require_field(body, field))
        keyspaces.merge(data_type, key, state)
        if collector is not None and collector.candidates:
            collector.heard(peer, data_type.name, key, state)
        return ack(body)
    for item in _deltas(body):
        try:
            entry = require_object(item, "each delta")
            key = require_str(entry, "key")
            state = decode(require_field(entry, field))
            keyspaces.merge(data_type, key, state)
            if collector is not None and collector.candidates:
                collector.heard(peer, data_type.name, key, state)
        except Exception as exc:  # whatever it is, it concerns this key alone
            _refused(ctx, src, data_type, item, exc)
    return ack(body)


def ack(body: Body) -> Body | None:
    """Only a merge that can be matched to a reply (it has a `msg_id`) is acknowledged."""
    return None if body.get("msg_id") is None else {"type": f"{body['type']}_ok"}


def _deltas(body: Body) -> list[Any]:
    """The deltas of a batch, plain or compressed; undecoded, so each is refused on its own."""
    if "deltas_z" in body:
        try:
            raw = orjson.loads(delta_compression.unpack(body["deltas_z"], MAX_INFLATED_BYTES))
        except orjson.JSONDecodeError as exc:
            raise Malformed(f"field 'deltas_z' does not hold JSON: {exc}") from None
        return require_list(raw, "field 'deltas_z'")
    return require_list(body["deltas"], "field 'deltas'")


def _refused(ctx: Context, src: str | None, data_type: DataType, item: Any, exc: Exception) -> None:
    key = item.get("key") if isinstance(item, dict) else None
    reason = str(exc) if isinstance(exc, Malformed) else f"{type(exc).__name__}: {exc}"
    if ctx.replicator is not None:
        ctx.replicator.merge_refused(src, data_type.name, key, reason)


def without_writes_of(peer: str, body: Body, src: str | None) -> Body:
    """A merge message with every state `peer`'s clients wrote taken out, acknowledged as usual.

    From `peer` itself nothing is kept.  From any other node, each state is
    stripped of what `peer` wrote (MV siblings of its dots, its counter entries,
    an LWW register or MVCC versions it stamped), because anti-entropy with a
    third node would otherwise bring those writes back.  Client-clocked KV
    siblings name no node and pass.  A node built to lose acknowledged writes,
    so that a history checker can be shown to catch one.
    """
    kept: list[Any] = []
    if src != peer:
        field = BY_MERGE_TYPE[body["type"]].state_field
        single = "deltas" not in body and "deltas_z" not in body
        if single and "entry" in body:  # PROTOCOL.md's dot-less entry: its sender wrote it
            return body
        strip = _STRIPS.get(body["type"])
        for item in [body] if single else _deltas(body):
            state = item.get(field) if isinstance(item, dict) else None
            if strip is None or state is None:
                kept.append(item)
            elif (stripped := strip(state, peer)) is not None:
                kept.append({"key": item.get("key"), field: stripped})
    out = {"type": body["type"], "deltas": kept}
    if body.get("msg_id") is not None:
        out["msg_id"] = body["msg_id"]
    return out


def _written_by(actor: Any, peer: str) -> bool:
    """Whether an actor or node id is `peer`'s: its id, or one of its incarnations (`id~…`)."""
    return isinstance(actor, str) and (actor == peer or actor.startswith(f"{peer}~"))


def _mv_without(siblings: Any, peer: str) -> Any:
    if not isinstance(siblings, list):
        return siblings  # malformed: refused as usual
    return [s for s in siblings if not _written_by(_dot_actor(s), peer)]


def _dot_actor(sibling: Any) -> Any:
    """A wire sibling's `dot[0]`, or None for a malformed one (which decoding then refuses)."""
    dot = sibling.get("dot") if isinstance(sibling, dict) else None
    return dot[0] if isinstance(dot, list) and dot else None


def _counter_without(state: Any, peer: str) -> Any:
    if not isinstance(state, dict):
        return state
    return {
        part: {a: n for a, n in totals.items() if not _written_by(a, peer)}
        if isinstance(totals, dict)
        else totals
        for part, totals in state.items()
    }


def _lww_without(state: Any, peer: str) -> Any:
    return None if isinstance(state, dict) and _written_by(state.get("replica"), peer) else state


def _mvcc_without(state: Any, peer: str) -> Any:
    if not isinstance(state, dict) or not isinstance(state.get("versions"), list):
        return state
    versions = [
        v
        for v in state["versions"]
        if not (isinstance(v, list) and len(v) > 2 and _written_by(v[2], peer))
    ]
    return {**state, "versions": versions}


_STRIPS: dict[str, Callable[[Any, str], Any]] = {
    "mv_merge": _mv_without,
    "counter_merge": _counter_without,
    "lww_merge": _lww_without,
    "mvcc_merge": _mvcc_without,
}
"""Per merge type: its wire state without `peer`'s writes, None when nothing is left."""


def _handler(data_type: DataType) -> Handler:
    def handle(ctx: Context, body: Body, src: str | None) -> Body | None:
        return merge(ctx, body, src, data_type)

    handle.__name__ = handle.__qualname__ = data_type.merge_type
    return handle


HANDLERS: dict[str, Handler] = {t.merge_type: _handler(t) for t in TYPES}
