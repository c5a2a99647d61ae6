"""What a node bounds per key: siblings (warned of, then refused) and the size of a value.

Riak's precedent: `sibling_warn` logs a key that holds that many siblings,
and a client write that would give a key more than `max_siblings` is refused
(error 22), as Riak's `max_siblings` refuses a put.  A merge from a peer is
never refused: it carries writes other nodes already acknowledged, so
refusing it would lose them; a merge that leaves a key above the limit is
counted and logged instead.  A client write whose value encodes to more than
`max_value_bytes` of JSON is refused (error 12), whatever the line it came on.

The checks are pure functions of a count or a value; `SiblingWatch` keeps the
two counters `status` reports and remembers no key: a key is warned of when
its count crosses `sibling_warn` upwards, so it is warned of again only after
it went back under.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from replica.errors import ErrorCode, RequestError

log = logging.getLogger("replica.limits")

DEFAULT_SIBLING_WARN = 25
DEFAULT_MAX_SIBLINGS = 100
DEFAULT_MAX_VALUE_BYTES = 1 << 20
MERGE_LOG_INTERVAL_S = 10.0
"""At most one log line per interval for merges that leave keys above `max_siblings`."""
_MAX_BYTES_PER_CHAR = 6  # `\u001f`: the longest JSON encoding of one character


@dataclass(frozen=True, slots=True)
class Limits:
    sibling_warn: int = DEFAULT_SIBLING_WARN
    max_siblings: int = DEFAULT_MAX_SIBLINGS
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES


class TooManySiblings(RequestError):
    """A client write that would add a sibling past `max_siblings`; nothing was changed."""

    def __init__(self, type_name: str, key: str, count: int, limit: int) -> None:
        how = "write with the context of a read" if type_name == "mv" else "kv_resolve"
        super().__init__(
            ErrorCode.PRECONDITION_FAILED,
            f"{type_name} key {key!r} would hold {count} siblings, more than max_siblings "
            f"({limit}): {how} to replace them",
        )
        self.count = count
        self.limit = limit


class ValueTooLarge(RequestError):
    """A client write whose value encodes to more than `max_value_bytes`; nothing was changed."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            ErrorCode.MALFORMED_REQUEST,
            f"value of {size} bytes (its JSON encoding) is larger than max_value_bytes ({limit})",
        )
        self.size = size
        self.limit = limit


def check_siblings(type_name: str, key: str, old: int, new: int, limit: int) -> None:
    """Refuse a client write that takes a key from `old` to `new` siblings past `limit`.

    A write that adds no sibling passes even above the limit, so a key that
    merges pushed past it can still be resolved.
    """
    if new > limit and new > old:
        raise TooManySiblings(type_name, key, new, limit)


def value_size(value: Any, limit: int) -> int | None:
    """The length of `value`'s JSON encoding when it is over `limit`; None when within.

    A string short enough that no encoding of it can exceed the limit is not
    encoded, so a small string value costs a length and a multiplication.
    """
    if type(value) is str and len(value) * _MAX_BYTES_PER_CHAR + 2 <= limit:
        return None
    size = len(orjson.dumps(value))
    return size if size > limit else None


def check_value(value: Any, limit: int) -> None:
    size = value_size(value, limit)
    if size is not None:
        raise ValueTooLarge(size, limit)


class SiblingWatch:
    """Counts keys that reached `sibling_warn` and merges that left keys above `max_siblings`."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.sibling_warnings = 0
        self.merges_over_max_siblings = 0
        self._clock = clock
        self._last_merge_log: float | None = None
        self._unlogged = 0

    def resized(self, type_name: str, key: str, old: int, new: int) -> None:
        """A key's sibling count moved from `old` to `new`: warn if it crossed `sibling_warn`."""
        warn = self.limits.sibling_warn
        if old < warn <= new:
            self.sibling_warnings += 1
            log.warning(
                "%s key %r holds %d siblings (sibling_warn %d, max_siblings %d): "
                "clients write without the context of their reads",
                type_name,
                key,
                new,
                warn,
                self.limits.max_siblings,
            )

    def merged(self, type_name: str, key: str, count: int) -> None:
        """A merge left the key with `count` siblings: counted and logged if over the limit."""
        limit = self.limits.max_siblings
        if count <= limit:
            return
        self.merges_over_max_siblings += 1
        now = self._clock()
        last = self._last_merge_log
        if last is not None and now - last < MERGE_LOG_INTERVAL_S:
            self._unlogged += 1
            return
        log.warning(
            "a merge left %s key %r with %d siblings, more than max_siblings (%d): kept, "
            "since a merge carries acknowledged writes (%d more such merges since the last line)",
            type_name,
            key,
            count,
            limit,
            self._unlogged,
        )
        self._last_merge_log = now
        self._unlogged = 0
