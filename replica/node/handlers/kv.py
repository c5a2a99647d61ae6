"""Handlers of the client-clocked KV (`kv_*`): the client's clock decides, conflicts are kept.

`kv_put`, `kv_get`, `kv_resolve` and `kv_delete` as PROTOCOL.md has them; the siblings
themselves are `replica.crdt.clocked_siblings`.
"""

from __future__ import annotations

from typing import Any

from replica.crdt.clocked_siblings import (
    Clock,
    ClockedSiblings,
    DeleteStatus,
    NotCovered,
    PutResult,
    clock_from_wire,
)
from replica.crdt.malformed import (
    MAX_CONTEXT_ACTORS,
    MAX_COUNTER,
    require_field,
    require_str,
    require_value,
)
from replica.crdt.registry import KV
from replica.errors import ErrorCode, RequestError
from replica.keyspaces import Keyspaces
from replica.limits import check_siblings, check_value
from replica.node.context import Body, Context, Handler


def put(keyspaces: Keyspaces, key: str, value: Any, clock: Clock) -> PutResult:
    """Raises `TooManySiblings`, changing nothing, for a put that would pass `max_siblings`."""
    current = keyspaces.states["kv"].get(key, KV.empty)
    updated, result = current.put(value, clock)
    old, new = len(current.siblings), len(updated.siblings)
    check_siblings("kv", key, old, new, keyspaces.limits.max_siblings)
    if updated != current:
        keyspaces.put(KV, key, updated)
    return result


def resolve(keyspaces: Keyspaces, key: str, value: Any, clock: Clock) -> None:
    """Raises `NotCovered` and changes nothing when the clock misses a sibling."""
    current = keyspaces.states["kv"].get(key, KV.empty)
    keyspaces.put(KV, key, current.resolve(value, clock))


def kv_put(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=ctx.integers_checked)
    check_value(value, ctx.keyspaces.limits.max_value_bytes)
    clock = clock_from_wire(require_field(body, "clock"), MAX_COUNTER, MAX_CONTEXT_ACTORS)
    result = put(ctx.keyspaces, key, value, clock)
    reply: Body = {"type": "kv_put_ok", "status": result.status}
    if result.status == "conflict":
        reply["siblings"] = result.siblings
    elif result.status == "rejected":
        reply["reason"] = "stale"
    return reply


def kv_get(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    ctx.shown("kv", key)
    siblings = ctx.keyspaces.states["kv"].get(key)
    values = [] if siblings is None else [s.to_wire() for s in siblings.siblings]
    return {"type": "kv_get_ok", "values": values}


def kv_resolve(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=ctx.integers_checked)
    check_value(value, ctx.keyspaces.limits.max_value_bytes)
    clock = clock_from_wire(require_field(body, "clock"), MAX_COUNTER, MAX_CONTEXT_ACTORS)
    try:
        resolve(ctx.keyspaces, key, value, clock)
    except NotCovered as exc:
        clocks = ", ".join(str(list(c)) for c in exc.uncovered)
        raise RequestError(
            ErrorCode.PRECONDITION_FAILED,
            f"clock {list(clock)} does not cover sibling clocks {clocks}",
        ) from None
    return {"type": "kv_resolve_ok", "status": "resolved"}


def delete(keyspaces: Keyspaces, key: str, clock: Clock) -> tuple[ClockedSiblings, DeleteStatus]:
    """A client's delete; a stale clock is `rejected` and changes nothing."""
    current = keyspaces.states["kv"].get(key, KV.empty)
    updated, status = current.delete(clock)
    if updated != current:
        keyspaces.put(KV, key, updated)
    return updated, status


def kv_delete(ctx: Context, body: Body, src: str | None) -> Body:
    """Removes the siblings the clock dominates and keeps the clock as a tombstone."""
    key = require_str(body, "key")
    clock = clock_from_wire(require_field(body, "clock"), MAX_COUNTER, MAX_CONTEXT_ACTORS)
    updated, status = delete(ctx.keyspaces, key, clock)
    reply: Body = {"type": "kv_delete_ok", "status": status, "siblings": len(updated.siblings)}
    if status == "rejected":
        reply["reason"] = "stale"
    return reply


HANDLERS: dict[str, Handler] = {
    "kv_put": kv_put,
    "kv_get": kv_get,
    "kv_resolve": kv_resolve,
    "kv_delete": kv_delete,
}
