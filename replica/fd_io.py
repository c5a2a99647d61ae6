"""Writing all of a buffer to a file descriptor: the one loop every pipe, file and stdout uses."""

from __future__ import annotations

import os
import select


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of `data` to `fd`, however many writes it takes.

    A descriptor left non-blocking (a stdout another process shares) is
    waited on until it drains rather than failing with `BlockingIOError`.
    """
    with memoryview(data) as view:
        written = 0
        while written < len(view):
            try:
                written += os.write(fd, view[written:])
            except BlockingIOError:
                select.select([], [fd], [])
