"""A canonical byte encoding of JSON values, for deterministic tie-breaks.

Merges must pick the same winner on every replica even when two states carry
different values under the same clock (two clients reusing a clock, a value
written twice at one timestamp).  Comparing canonical encodings gives a total
order on JSON values that does not depend on key order or arrival order.
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_SORT_KEYS


def canonical(value: Any) -> bytes:
    """The value's JSON with sorted keys and no spaces: equal values, equal bytes."""
    return orjson.dumps(value, option=_OPTIONS)


class CanonicalValue:
    """Base of a frozen, slotted dataclass with a `value` and a `_canonical` field.

    Fills `_canonical` with the value's canonical encoding once, at creation:
    equality and tie-breaks compare it rather than the value, so `1` and `true`
    (equal in Python, different in JSON) stay different.
    """

    __slots__ = ()
    value: Any
    _canonical: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "_canonical", canonical(self.value))
