"""Handlers of the PN-counter (`counter_*`): additions from every node, summed.

`counter_add {key, delta}` adds any integer (negative takes away) and answers
the total this node now sees; `counter_read {key}` answers it, 0 for an
absent key; `counter_delete {key}` takes away the total seen here, so the key
reads 0 but additions made concurrently elsewhere survive it.  Jylis's
`PNCOUNT INC|DEC key [n]` and `PNCOUNT GET key` for the Redis port.  The
counter itself is `replica.crdt.pn_counter`.
"""

from __future__ import annotations

from replica.crdt.malformed import Malformed, require_field, require_str
from replica.crdt.pn_counter import MAX_TOTAL, TotalTooLarge
from replica.crdt.registry import COUNTER
from replica.errors import ErrorCode, RequestError
from replica.node.context import Body, Context, Handler
from replica.node.resp_terms import (
    Command,
    Integer,
    Request,
    Term,
    arity,
    integer,
    ok,
    text,
    unknown,
)


def counter_add(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    delta = require_field(body, "delta")
    if type(delta) is not int or not -MAX_TOTAL <= delta <= MAX_TOTAL:
        raise Malformed(f"field 'delta' must be an integer from {-MAX_TOTAL} to {MAX_TOTAL}")
    keyspaces = ctx.keyspaces
    current = keyspaces.states["counter"].get(key, COUNTER.empty)
    try:
        counter = current.add(keyspaces.actor, delta)
    except TotalTooLarge as exc:
        raise RequestError(ErrorCode.PRECONDITION_FAILED, f"counter {key!r}: {exc}") from None
    if counter is not current:
        keyspaces.put(COUNTER, key, counter)
    return {"type": "counter_add_ok", "value": counter.value}


def counter_read(ctx: Context, body: Body, src: str | None) -> Body:
    key = require_str(body, "key")
    ctx.shown("counter", key)
    counter = ctx.keyspaces.states["counter"].get(key, COUNTER.empty)
    return {"type": "counter_read_ok", "value": counter.value}


def pncount(args: list[bytes]) -> Request:
    """`PNCOUNT INC key [n]` and `PNCOUNT DEC key [n]` (+OK), `PNCOUNT GET key` (the total)."""
    sub = args[0].upper() if args else b""
    if sub in (b"INC", b"DEC"):
        if len(args) not in (2, 3):
            arity(f"pncount|{sub.decode().lower()}", args, 3)
        amount = integer(args[2], "amount", 0, MAX_TOTAL) if len(args) == 3 else 1
        delta = amount if sub == b"INC" else -amount
        body = {"type": "counter_add", "key": text(args[1], "key"), "delta": delta}
        return counter_add, body, ok
    if sub == b"GET":
        arity("pncount|get", args, 2)
        return counter_read, {"type": "counter_read", "key": text(args[1], "key")}, _total
    raise unknown("pncount", args)


def _total(reply: Body) -> Term:
    return Integer(reply["value"])


def counter_delete(ctx: Context, body: Body, src: str | None) -> Body:
    """Resets the counter to 0 by taking away the total observed here; concurrent additions stay."""
    key = require_str(body, "key")
    keyspaces = ctx.keyspaces
    current = keyspaces.states["counter"].get(key, COUNTER.empty)
    try:
        counter = current.reset(keyspaces.actor)
    except TotalTooLarge as exc:
        raise RequestError(ErrorCode.PRECONDITION_FAILED, f"counter {key!r}: {exc}") from None
    if counter is not current:
        keyspaces.put(COUNTER, key, counter)
    return {"type": "counter_delete_ok", "value": counter.value}


HANDLERS: dict[str, Handler] = {
    "counter_add": counter_add,
    "counter_read": counter_read,
    "counter_delete": counter_delete,
}
RESP_COMMANDS: dict[bytes, Command] = {b"PNCOUNT": pncount}
