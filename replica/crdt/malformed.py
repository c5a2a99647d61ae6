"""Validation of decoded wire values.

Decoders in the core raise `Malformed` for input a client or peer got wrong, so
the shell can answer error 12 and change nothing.  Any other exception escaping
the core is a bug and becomes error 13 instead: the two must never be confused,
which is why this is its own exception type and not a bare `ValueError`.
"""

from __future__ import annotations

from typing import Any

MAX_INT = (1 << 63) - 1  # timestamps and counters must fit a signed 64-bit word
MAX_COUNTER = (1 << 53) - 1
"""The largest counter a client may put in a context or clock: exact in every JSON
reader (a double's integers), and far enough below `MAX_INT` that a dot issued
one above it still fits every peer's check."""
MAX_CONTEXT_ACTORS = 1000
"""The most entries a client's context or clock may have: bounds the work one request buys."""
MAX_VALUE_DEPTH = 100
"""How deep arrays and objects may nest in a value.  Stored records, replies and
gossip wrap a value in at most a dozen more levels, well inside the 254 the
JSON encoder can write, so a value that was accepted can always be encoded."""


INEXACT_FROM = float(1 << 63)
"""A float with no fraction this large may be how the decoder read an integer literal
beyond 64 bits (it reads those as floats): such a value is `Suspect` until its line is
checked."""


class Malformed(ValueError):
    """A request or peer message has a missing or ill-typed field."""


class Suspect(Malformed):
    """A value holds a float that may be an integer literal beyond 64 bits.

    Only the request's own text can tell (1e19 is a float, 10000000000000000000
    an integer); the shell checks it and refuses the request, or handles it again
    with that check done.
    """


def require_str(body: dict[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise Malformed(f"field {field!r} must be a string, got {_kind(value)}")
    return value


def require_field(body: dict[str, Any], field: str) -> Any:
    """A field that may hold any JSON value, null included, but must be present."""
    if field not in body:
        raise Malformed(f"field {field!r} is required")
    return body[field]


def require_count(value: Any, what: str, limit: int = MAX_INT) -> int:
    """A non-negative integer up to `limit` (JSON booleans are not integers)."""
    if type(value) is not int or value < 0 or value > limit:
        raise Malformed(f"{what} must be an integer from 0 to {limit}, got {_kind(value)}")
    return value


def require_value(body: dict[str, Any], field: str, *, checked: bool = False) -> Any:
    """A client's value: any JSON value, present, nested at most `MAX_VALUE_DEPTH` deep.

    Raises `Suspect` for a float that may be an integer beyond 64 bits, unless the
    request's text was `checked` for those.  Scalars, the common case, cost a type
    test or two; containers are walked level by level.
    """
    if field not in body:
        raise Malformed(f"field {field!r} is required")
    value = body[field]
    kind = type(value)
    if kind is list or kind is dict:
        _check_depth(value, field, checked)
    elif kind is float and not checked and _inexact(value):
        raise Suspect(f"field {field!r} may hold an integer beyond 64 bits")
    return value


def _inexact(number: float) -> bool:
    return abs(number) >= INEXACT_FROM and number.is_integer()


def _check_depth(value: list[Any] | dict[str, Any], field: str, checked: bool) -> None:
    level = [value]
    depth = 1
    while True:
        children = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
        ]
        if not checked and any(type(c) is float and _inexact(c) for c in children):
            raise Suspect(f"field {field!r} may hold an integer beyond 64 bits")
        inner = [child for child in children if type(child) is list or type(child) is dict]
        if not inner:
            return
        depth += 1
        if depth > MAX_VALUE_DEPTH:
            raise Malformed(
                f"field {field!r} nests arrays and objects more than {MAX_VALUE_DEPTH} deep"
            )
        level = inner


def optional_count(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    return None if value is None else require_count(value, f"field {field!r}")


def require_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise Malformed(f"{what} must be an array, got {_kind(value)}")
    return value


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Malformed(f"{what} must be an object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null or nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
