"""Handlers of the MV register (`mv_*`): writes that never lose a concurrent value.

`mv_write`, `mv_read` and `mv_delete` as PROTOCOL.md has them, its dot-less
form of `mv_merge` (one `entry` from the sender), and Jylis's `MVREG` for the
Redis port.  The register itself is `replica.crdt.mv_register`.
"""

from __future__ import annotations

from typing import Any

from replica.crdt import version_vector
from replica.crdt.malformed import (
    MAX_CONTEXT_ACTORS,
    MAX_COUNTER,
    require_field,
    require_str,
    require_value,
)
from replica.crdt.mv_register import MVRegister, Sibling
from replica.crdt.registry import MV
from replica.crdt.version_vector import VersionVector
from replica.keyspaces import Keyspaces
from replica.limits import check_siblings, check_value
from replica.node.context import Body, Context, Handler
from replica.node.handlers.merging import ack, merge
from replica.node.resp_terms import Command, Request, Term, Values, arity, ok, text, unknown

_EMPTY: MVRegister = MV.empty


def write(
    keyspaces: Keyspaces, key: str, value: Any, context: VersionVector | None
) -> tuple[MVRegister, Sibling]:
    """A client's write at this node's actor; returns the new register and its sibling.

    Its counter is above `keyspaces.dot_floor` as well as the key's own
    history.  Raises `TooManySiblings`, changing nothing, for a write that
    would add a sibling past `max_siblings`.
    """
    current: MVRegister = keyspaces.states["mv"].get(key, _EMPTY)
    register, sibling = current.write(keyspaces.actor, value, context, keyspaces.dot_floor)
    check_siblings(
        "mv", key, len(current.siblings), len(register.siblings), keyspaces.limits.max_siblings
    )
    keyspaces.put(MV, key, register)
    return register, sibling


def mv_write(ctx: Context, body: Body, src: str | None) -> Body:
    register, sibling = _write(ctx, body)
    values, register_context = register.read_view()
    # Alone, the new sibling's vclock is the register's context: one dict serves both.
    vclock = register_context if len(values) == 1 else sibling.vclock()
    return {"type": "mv_write_ok", "vclock": vclock, "context": register_context, "values": values}


def mv_set(ctx: Context, body: Body, src: str | None) -> Body:
    """`mv_write` answered only `mv_write_ok`: what Redis's `MVREG SET` replies `+OK` to."""
    _write(ctx, body)
    return {"type": "mv_write_ok"}


def _write(ctx: Context, body: Body) -> tuple[MVRegister, Sibling]:
    """An `mv_write` request's fields checked, then the write."""
    key = require_str(body, "key")
    value = require_value(body, "value", checked=ctx.integers_checked)
    check_value(value, ctx.keyspaces.limits.max_value_bytes)
    raw_context = body.get("context")
    context = (
        None
        if raw_context is None
        else version_vector.from_wire(raw_context, "context", MAX_COUNTER, MAX_CONTEXT_ACTORS)
    )
    return write(ctx.keyspaces, key, value, context)


def mv_values(ctx: Context, body: Body, src: str | None) -> Body:
    """`mv_read` answered with the visible values alone: what Redis's `MVREG GET` returns."""
    key = require_str(body, "key")
    ctx.shown("mv", key)
    register = ctx.keyspaces.states["mv"].get(key)
    return {"type": "mv_read_ok", "values": [] if register is None else register.values()}


def mv_read(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    ctx.shown("mv", key)
    register: MVRegister | None = ctx.keyspaces.states["mv"].get(key)
    if register is None:
        return {"type": "mv_read_ok", "values": [], "context": {}}
    values, context = register.read_view()
    return {"type": "mv_read_ok", "values": values, "context": context}


def mv_merge(ctx: Context, body: Body, src: str | None) -> Body | None:
    """Whole sibling sets, a batch of them, or PROTOCOL.md's single dot-less entry."""
    if "entry" not in body:
        return merge(ctx, body, src, MV)
    key = require_str(body, "key")
    ctx.keyspaces.merge(MV, key, MVRegister.of([Sibling.from_entry(body["entry"], src)]))
    return ack(body)


def mvreg(args: list[bytes]) -> Request:
    """`MVREG SET key value` (+OK), `MVREG GET key` (the visible values), `MVREG DEL key` (+OK)."""
    sub = args[0].upper() if args else b""
    if sub == b"SET":
        arity("mvreg|set", args, 3)
        key, value = text(args[1], "key"), text(args[2], "value")
        return mv_set, {"type": "mv_write", "key": key, "value": value}, ok
    if sub == b"GET":
        arity("mvreg|get", args, 2)
        return mv_values, {"type": "mv_read", "key": text(args[1], "key")}, _values
    if sub == b"DEL":
        arity("mvreg|del", args, 2)
        return mv_delete_here, {"type": "mv_delete", "key": text(args[1], "key")}, ok
    raise unknown("mvreg", args)


def _values(reply: Body) -> Term:
    return Values(reply["values"])


def delete(keyspaces: Keyspaces, key: str, context: VersionVector) -> MVRegister:
    """A client's delete of what `context` covers; returns the register left."""
    current = keyspaces.states["mv"].get(key, _EMPTY)
    register = current.delete(context)
    if register != current:
        keyspaces.put(MV, key, register)
    return register


def mv_delete(ctx: Context, body: Body, src: str | None) -> Body:
    """Removes the siblings the context covers; answers what is left, concurrent values only."""
    key = require_str(body, "key")
    raw_context = require_field(body, "context")
    context = version_vector.from_wire(raw_context, "context", MAX_COUNTER, MAX_CONTEXT_ACTORS)
    values, register_context = delete(ctx.keyspaces, key, context).read_view()
    return {"type": "mv_delete_ok", "values": values, "context": register_context}


def mv_delete_here(ctx: Context, body: Body, src: str | None) -> Body:
    """`MVREG DEL key`: deletes every value this node holds (its current context)."""
    key = require_str(body, "key")
    current = ctx.keyspaces.states["mv"].get(key, _EMPTY)
    delete(ctx.keyspaces, key, current.context())
    return {"type": "mv_delete_ok"}


HANDLERS: dict[str, Handler] = {
    "mv_write": mv_write,
    "mv_read": mv_read,
    "mv_merge": mv_merge,
    "mv_delete": mv_delete,
}
RESP_COMMANDS: dict[bytes, Command] = {b"MVREG": mvreg}
