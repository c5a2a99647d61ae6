"""Newline framing, sans I/O: bytes in, complete lines out.

A transport feeds whatever bytes it read; the framer hands back the complete
lines they finish, without their `\\n` (and without a `\\r` before it, which
netcat sends on some systems).  Empty lines are skipped.

The limit counts every byte of a line before its `\\n`.  A line over
`max_line_bytes` sets `overflowed` as soon as the framer has seen too many of
its bytes, whether or not its newline has arrived, so a peer that never sends
a newline cannot make the framer hold more than the limit.  Lines completed
before the oversized one, in the same chunk, are still returned.

After an overflow the framer ignores further input until `recover()` is
called.  A TCP connection is closed instead; stdio calls `recover()`, which
drops the rest of the oversized line and carries on with the lines after it.
"""

from __future__ import annotations

DEFAULT_MAX_LINE_BYTES = 1 << 20
"""A request line longer than this (`max_line_bytes`) is refused and its connection closed."""
DEFAULT_PARTIAL_LINE_TIMEOUT_MS = 10_000
"""A connection holding an unfinished line this long (`partial_line_timeout_ms`) is closed."""
DEFAULT_MAX_CONNECTIONS = 10_000
"""Open connections a listening port accepts (`max_connections`); more are refused."""
NEWLINE = b"\n"
CARRIAGE_RETURN = b"\r"


class LineFramer:
    """Split a byte stream into lines of at most `max_line_bytes` bytes."""

    __slots__ = ("_buffer", "_discarding", "_pending", "max_line_bytes", "overflowed")

    def __init__(self, max_line_bytes: int) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self.max_line_bytes = max_line_bytes
        self.overflowed = False
        self._buffer = bytearray()  # the start of a line whose newline has not arrived
        self._discarding = False  # skipping the rest of an oversized line
        self._pending = b""  # bytes after an oversized line, kept for recover()

    def feed(self, data: bytes) -> list[bytes]:
        """The lines `data` completes, in order; stops at the first oversized line."""
        if self.overflowed:
            return []
        if self._discarding:
            end = data.find(NEWLINE)
            if end < 0:
                return []
            self._discarding = False
            data = data[end + 1 :]
        lines: list[bytes] = []
        if self._buffer:
            end = data.find(NEWLINE)
            if end < 0:
                if len(self._buffer) + len(data) > self.max_line_bytes:
                    self._overflow(discard_rest=True)
                else:
                    self._buffer += data
                return []
            if len(self._buffer) + end > self.max_line_bytes:
                self._overflow(pending=data[end + 1 :])
                return []
            self._buffer += data[:end]
            self._take(bytes(self._buffer), lines)
            self._buffer.clear()
            data = data[end + 1 :]
        parts = data.split(NEWLINE)
        rest = parts.pop()
        limit = self.max_line_bytes
        if parts and max(map(len, parts)) > limit:
            index = next(i for i, part in enumerate(parts) if len(part) > limit)
            for part in parts[:index]:
                self._take(part, lines)
            self._overflow(pending=NEWLINE.join([*parts[index + 1 :], rest]))
            return lines
        if CARRIAGE_RETURN in data:
            for part in parts:
                self._take(part, lines)
        else:
            lines += filter(None, parts)  # the common case: no \r to strip, skip empty lines
        if len(rest) > limit:
            self._overflow(discard_rest=True)
        elif rest:
            self._buffer += rest
        return lines

    def recover(self) -> list[bytes]:
        """Drop the oversized line and return the complete lines that followed it."""
        if not self.overflowed:
            return []
        self.overflowed = False
        pending, self._pending = self._pending, b""
        return self.feed(pending) if pending else []

    @property
    def buffered(self) -> int:
        """Bytes held for a line whose newline has not arrived yet."""
        return len(self._buffer)

    def _overflow(self, *, pending: bytes = b"", discard_rest: bool = False) -> None:
        self.overflowed = True
        self._buffer.clear()
        self._pending = pending
        self._discarding = discard_rest

    @staticmethod
    def _take(line: bytes, lines: list[bytes]) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if line:
            lines.append(line)
