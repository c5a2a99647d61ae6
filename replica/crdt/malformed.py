"""Validation of decoded wire values.

Decoders in the core raise `Malformed` for input a client or peer got wrong, so
the shell can answer error 12 and change nothing.  Any other exception escaping
the core is a bug and becomes error 13 instead: the two must never be confused,
which is why this is its own exception type and not a bare `ValueError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_INT = (1 << 63) - 1  # timestamps and counters must fit a signed 64-bit word


class Malformed(ValueError):
    """A request or peer message has a missing or ill-typed field."""


def require_str(body: Mapping[str, Any], field: str) -> str:
    value = body.get(field)
    if not isinstance(value, str):
        raise Malformed(f"field {field!r} must be a string, got {_kind(value)}")
    return value


def require_field(body: Mapping[str, Any], field: str) -> Any:
    """A field that may hold any JSON value, null included, but must be present."""
    if field not in body:
        raise Malformed(f"field {field!r} is required")
    return body[field]


def require_count(value: Any, what: str) -> int:
    """A non-negative integer that fits 64 bits (JSON booleans are not integers)."""
    if type(value) is not int or value < 0 or value > MAX_INT:
        raise Malformed(f"{what} must be an integer from 0 to {MAX_INT}, got {_kind(value)}")
    return value


def optional_count(body: Mapping[str, Any], field: str) -> int | None:
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
