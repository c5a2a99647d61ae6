"""Handlers of the MVCC store (`mvcc_*`): versions by timestamp, snapshot reads.

`mvcc_put`, `mvcc_get`, `mvcc_snapshot`, `mvcc_gc` and `mvcc_delete` as
PROTOCOL.md has them;
the version chain itself is `replica.crdt.mvcc`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from replica.crdt.malformed import (
    Malformed,
    optional_count,
    require_count,
    require_list,
    require_str,
    require_value,
)
from replica.crdt.mvcc import TimestampConflict, Version
from replica.crdt.registry import MVCC
from replica.errors import ErrorCode, RequestError
from replica.keyspaces import Keyspaces, TooFarAhead
from replica.limits import check_value
from replica.node.context import Body, Context, Handler
from replica.node.handlers.clocked import too_far_ahead


def put(keyspaces: Keyspaces, key: str, value: Any, timestamp: int | None) -> tuple[int, int]:
    """Returns (version, timestamp).

    Raises `TimestampConflict` or `TooFarAhead`, changing nothing.
    """
    current = keyspaces.states["mvcc"].get(key, MVCC.empty)
    ts = keyspaces.timestamp(timestamp)
    chain, version = current.put(ts, value, keyspaces.node_id)
    if chain is not current:
        # collection only drops versions older than this one: its number stands
        collected, _ = chain.collect(keyspaces.horizon)
        keyspaces.put(MVCC, key, collected)
    return version, ts


def read(keyspaces: Keyspaces, key: str, read_timestamp: int | None) -> tuple[Version, int] | None:
    """The version a read at `read_timestamp` sees; None when there is none or it is a tombstone."""
    chain = keyspaces.states["mvcc"].get(key)
    found = None if chain is None else chain.read(read_timestamp)
    return None if found is None or found[0].deleted else found


def mvcc_put(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=ctx.integers_checked)
    check_value(value, ctx.keyspaces.limits.max_value_bytes)
    timestamp = optional_count(body, "timestamp")
    version, ts = _versioned(ctx, timestamp, lambda: put(ctx.keyspaces, key, value, timestamp))
    return {"type": "mvcc_put_ok", "version": version, "timestamp": ts}


def mvcc_get(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    read_timestamp = optional_count(body, "read_timestamp")
    _check_horizon(ctx.keyspaces, read_timestamp)
    ctx.shown("mvcc", key)
    found = read(ctx.keyspaces, key, read_timestamp)
    if found is None:
        at = "" if read_timestamp is None else f" at or before timestamp {read_timestamp}"
        raise RequestError(ErrorCode.KEY_DOES_NOT_EXIST, f"no version of {key!r}{at}")
    return {"type": "mvcc_get_ok", **_version_view(*found)}


def mvcc_snapshot(ctx: Context, body: Body, src: str | None) -> Body:
    keys = require_list(body.get("keys"), "field 'keys'")
    if not all(isinstance(k, str) for k in keys):
        raise Malformed("field 'keys' must be an array of strings")
    read_timestamp = require_count(body.get("read_timestamp"), "field 'read_timestamp'")
    _check_horizon(ctx.keyspaces, read_timestamp)
    values: Body = {}
    for key in keys:
        ctx.shown("mvcc", key)
        found = read(ctx.keyspaces, key, read_timestamp)
        values[key] = None if found is None else _version_view(*found)
    return {"type": "mvcc_snapshot_ok", "values": values}


def mvcc_gc(ctx: Context, body: Body, src: str | None) -> Body:
    before = require_count(body.get("before"), "field 'before'")
    removed = ctx.keyspaces.collect_garbage(before)
    return {"type": "mvcc_gc_ok", "removed": removed, "horizon": ctx.keyspaces.horizon}


def _check_horizon(keyspaces: Keyspaces, read_timestamp: int | None) -> None:
    horizon = keyspaces.horizon
    if read_timestamp is not None and read_timestamp < horizon:
        raise RequestError(
            ErrorCode.PRECONDITION_FAILED,
            f"read_timestamp {read_timestamp} is below the garbage-collection horizon {horizon}",
        )


def _version_view(version: Version, number: int) -> Body:
    return {"value": version.value, "version": number, "as_of_timestamp": version.timestamp}


def delete(keyspaces: Keyspaces, key: str, timestamp: int | None) -> tuple[int, int]:
    """A tombstone version; returns (version, timestamp).

    Raises `TimestampConflict` or `TooFarAhead`, changing nothing.
    """
    current = keyspaces.states["mvcc"].get(key, MVCC.empty)
    ts = keyspaces.timestamp(timestamp)
    chain, version = current.put(ts, None, keyspaces.node_id, deleted=True)
    if chain is not current:
        collected, _ = chain.collect(keyspaces.horizon)
        keyspaces.put(MVCC, key, collected)
    return version, ts


def mvcc_delete(ctx: Context, body: Body, src: str | None) -> Body:
    """Reads at or after the tombstone's timestamp find no value; earlier ones are kept."""
    key = require_str(body, "key")
    timestamp = optional_count(body, "timestamp")
    version, ts = _versioned(ctx, timestamp, lambda: delete(ctx.keyspaces, key, timestamp))
    return {"type": "mvcc_delete_ok", "version": version, "timestamp": ts}


def _versioned(
    ctx: Context, timestamp: int | None, add: Callable[[], tuple[int, int]]
) -> tuple[int, int]:
    """`add()` a version (a value or a tombstone): (its number, its timestamp), or the error."""
    try:
        return add()
    except TimestampConflict as conflict:
        raise RequestError(
            ErrorCode.TXN_CONFLICT,
            f"timestamp {timestamp} is at or below the key's newest version ({conflict.newest})",
        ) from None
    except TooFarAhead as ahead:
        raise too_far_ahead(ctx.keyspaces, ahead) from None


HANDLERS: dict[str, Handler] = {
    "mvcc_put": mvcc_put,
    "mvcc_get": mvcc_get,
    "mvcc_snapshot": mvcc_snapshot,
    "mvcc_gc": mvcc_gc,
    "mvcc_delete": mvcc_delete,
}
