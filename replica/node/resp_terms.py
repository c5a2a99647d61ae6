"""What a Redis command becomes: a handler and a request body, and its reply as RESP terms.

A data type's handler module turns its Redis commands (`MVREG SET k v`) into
the request bodies the JSON port takes, run by its handlers (`Node.run`), so a
rule or a refusal reads the same on both ports, and says how the handler's
reply reads as RESP.  The transport
(`replica.transports.resp`) encodes the terms; nothing here touches bytes on
the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replica.crdt.malformed import MAX_INT
from replica.node.context import Handler

Body = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Simple:
    """A simple string reply (`+OK`)."""

    text: str


@dataclass(frozen=True, slots=True)
class Integer:
    """An integer reply (`:5`)."""

    value: int


@dataclass(frozen=True, slots=True)
class Value:
    """A stored value, sent as a bulk string: a string as it is, anything else as its JSON."""

    value: Any


@dataclass(frozen=True, slots=True)
class Values:
    """An array of stored values, each sent as `Value` is."""

    values: list[Any]


OK = Simple("OK")

Term = Simple | Integer | Value | Values | list[Any] | None
"""A reply as RESP terms; a list is an array of terms, None the null reply."""

Reply = Callable[[Body], Term]
"""The RESP terms of a handler's (successful) reply."""


def ok(reply: Body) -> Term:
    """`+OK`, whatever the successful reply said: what a Redis write answers."""
    return OK


Request = tuple[Handler, Body, Reply]
"""The handler that answers a Redis command, the request body it gets, and how its reply reads."""

Command = Callable[[list[bytes]], Request]
"""A Redis command's arguments (after its name) -> its `Request`."""


class RespError(Exception):
    """A command refused before any handler ran; `str()` is the error line (`ERR ...`)."""


def arity(command: str, args: list[bytes], count: int) -> None:
    if len(args) != count:
        raise RespError(f"ERR wrong number of arguments for '{command}' command")


def text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RespError(f"ERR {what} must be valid UTF-8") from None


def integer(raw: bytes, what: str, low: int = 0, high: int = MAX_INT) -> int:
    """A decimal integer argument from `low` to `high`."""
    digits = raw[1:] if raw.startswith(b"-") else raw
    value = int(raw) if digits.isdigit() and digits.isascii() and len(digits) <= 20 else None
    if value is None or not low <= value <= high:
        raise RespError(f"ERR {what} must be an integer from {low} to {high}")
    return value


def unknown(command: str, args: list[bytes]) -> RespError:
    """The error for a missing or unknown subcommand of `command`."""
    if not args:
        return RespError(f"ERR wrong number of arguments for '{command.lower()}' command")
    name = args[0].decode("utf-8", "replace")
    return RespError(f"ERR unknown subcommand '{name}' for '{command.upper()}'")
