"""The one merge handler: `<type>_merge` from a peer, for every type of the registry.

A merge message carries one key's state (`{key, <state field>}`) or a batch
of them (`deltas`, or `deltas_z` compressed).  Each state is decoded by its
type's `from_wire` and merged by its type's `merge`, through
`Keyspaces.merge`; nothing here knows one type from another.
"""

from __future__ import annotations

from typing import Any

import orjson

from replica.crdt.malformed import (
    Malformed,
    require_field,
    require_list,
    require_object,
    require_str,
)
from replica.crdt.registry import TYPES, DataType
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
    if "deltas" not in body and "deltas_z" not in body:
        keyspaces.merge(data_type, require_str(body, "key"), decode(require_field(body, field)))
        return ack(body)
    for item in _deltas(body):
        try:
            entry = require_object(item, "each delta")
            key = require_str(entry, "key")
            keyspaces.merge(data_type, key, decode(require_field(entry, field)))
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


def _handler(data_type: DataType) -> Handler:
    def handle(ctx: Context, body: Body, src: str | None) -> Body | None:
        return merge(ctx, body, src, data_type)

    handle.__name__ = handle.__qualname__ = data_type.merge_type
    return handle


HANDLERS: dict[str, Handler] = {t.merge_type: _handler(t) for t in TYPES}
