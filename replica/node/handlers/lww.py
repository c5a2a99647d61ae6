"""Handlers of the LWW register (`lww_*`): the greatest (timestamp, replica) wins.

`lww_write`, `lww_read` and `lww_delete` as PROTOCOL.md has them, and
Jylis's `TREG` for the Redis port; the register itself is `replica.crdt.lww`.
"""

from __future__ import annotations

from typing import Any

from replica.crdt.lww import LWWRegister
from replica.crdt.malformed import optional_count, require_str, require_value
from replica.crdt.registry import LWW
from replica.errors import ErrorCode, RequestError
from replica.keyspaces import Keyspaces, TooFarAhead
from replica.limits import check_value
from replica.node.context import Body, Context, Handler
from replica.node.handlers.clocked import too_far_ahead
from replica.node.resp_terms import (
    Command,
    Integer,
    Request,
    Term,
    Value,
    arity,
    integer,
    ok,
    text,
    unknown,
)


def write(keyspaces: Keyspaces, key: str, value: Any, timestamp: int | None) -> int:
    """Returns the write's timestamp; raises `TooFarAhead`, changing nothing."""
    ts = keyspaces.timestamp(timestamp)
    _merge_in(keyspaces, key, LWWRegister(value, ts, keyspaces.node_id))
    return ts


def _merge_in(keyspaces: Keyspaces, key: str, register: LWWRegister) -> None:
    """A client's write or tombstone merged into the key: it wins only if it is the greater."""
    current = keyspaces.states["lww"].get(key)
    merged = register if current is None else current.merge(register)
    if merged != current:
        keyspaces.put(LWW, key, merged)


def lww_write(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    value = require_value(body, "value", checked=ctx.integers_checked)
    check_value(value, ctx.keyspaces.limits.max_value_bytes)
    timestamp = optional_count(body, "timestamp")
    try:
        ts = write(ctx.keyspaces, key, value, timestamp)
    except TooFarAhead as exc:
        raise too_far_ahead(ctx.keyspaces, exc) from None
    return {"type": "lww_write_ok", "timestamp": ts, "replica": ctx.node_id}


def lww_read(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    ctx.shown("lww", key)
    register = ctx.keyspaces.states["lww"].get(key)
    if register is None or register.deleted:
        raise RequestError(ErrorCode.KEY_DOES_NOT_EXIST, f"no value for {key!r}")
    return {"type": "lww_read_ok", **register.to_wire()}


def treg(args: list[bytes]) -> Request:
    """`TREG SET key value timestamp`, `TREG DEL key timestamp` (+OK), `TREG GET key`.

    `GET` answers [value, timestamp], or [] for an absent or deleted key.
    """
    sub = args[0].upper() if args else b""
    if sub == b"GET":
        arity("treg|get", args, 2)
        return lww_read, {"type": "lww_read", "key": text(args[1], "key")}, _value_and_timestamp
    if sub == b"SET":
        arity("treg|set", args, 4)
        key, value = text(args[1], "key"), text(args[2], "value")
        timestamp = integer(args[3], "timestamp")
        body = {"type": "lww_write", "key": key, "value": value, "timestamp": timestamp}
        return lww_write, body, ok
    if sub == b"DEL":
        arity("treg|del", args, 3)
        key, timestamp = text(args[1], "key"), integer(args[2], "timestamp")
        return lww_delete, {"type": "lww_delete", "key": key, "timestamp": timestamp}, ok
    raise unknown("treg", args)


def _value_and_timestamp(reply: Body) -> Term:
    return [Value(reply["value"]), Integer(reply["timestamp"])]


def delete(keyspaces: Keyspaces, key: str, timestamp: int | None) -> int:
    """A tombstone at `timestamp` (the clock's when None); returns its timestamp.

    Raises `TooFarAhead`, changing nothing.
    """
    ts = keyspaces.timestamp(timestamp)
    _merge_in(keyspaces, key, LWWRegister.tombstone(ts, keyspaces.node_id))
    return ts


def lww_delete(ctx: Context, body: Body, src: str | None) -> Body:
    """Wins over every write at or below its (timestamp, replica), like a write would."""
    key = require_str(body, "key")
    timestamp = optional_count(body, "timestamp")
    try:
        ts = delete(ctx.keyspaces, key, timestamp)
    except TooFarAhead as exc:
        raise too_far_ahead(ctx.keyspaces, exc) from None
    return {"type": "lww_delete_ok", "timestamp": ts, "replica": ctx.node_id}


HANDLERS: dict[str, Handler] = {
    "lww_write": lww_write,
    "lww_read": lww_read,
    "lww_delete": lww_delete,
}
RESP_COMMANDS: dict[bytes, Command] = {b"TREG": treg}
