"""The log writer process: makes a durable node's commits durable, and runs its checkpoints.

A commit is durable once it is appended to the commit log with one `pwrite`
of an O_DSYNC file.  A thread of the node waiting for that would have to take
the busy event loop's interpreter lock back after every call; in a process
of its own the writer never waits for the node's interpreter.  The node
writes each commit down a pipe (`pipe_protocol`) and reads the result as one
more event of its loop, and the writer appends everything that has arrived
with one `pwrite`: a group commit over the node's commits.

The writer owns the log (`segment_log`) and its checkpoints
(`checkpoint_schedule`), which run in the checkpointer process it starts.

Lifetime.  When its input ends without `CLOSE` the node is gone, so it exits
at once: nothing it had not acknowledged was promised to anyone.  It inherits
the descriptor that holds the data dir's lock and keeps it until it exits,
so a node restarted after a kill -9 cannot read the log while the writer of
its previous life might still append to it.  It runs in a session of its
own, so a terminal's Ctrl-C reaches the node, which closes it properly.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

from replica.durable.checkpoint_schedule import CheckpointSchedule
from replica.durable.checkpointer_link import Checkpointer
from replica.durable.commit_log import frame
from replica.durable.pipe_protocol import (
    APPEND,
    CLOSE,
    READY,
    Results,
    parse_log_writer_argv,
    result_line,
    split_requests,
)
from replica.durable.segment_log import SegmentLog
from replica.fd_io import write_all

READ_BYTES = 1 << 20


class Writer:
    """A log and its checkpoints, answering the node's requests."""

    def __init__(self, segments: SegmentLog, checkpoints: CheckpointSchedule) -> None:
        self.segments = segments
        self.checkpoints = checkpoints

    def answer(self, requests: list[tuple[int, bytes]]) -> tuple[Results, bool]:
        """Carry the requests out in order; True when one of them closed the log.

        Consecutive appends are written together: one `pwrite`, one sync.
        """
        results, appends = Results(), []
        for kind, body in requests:
            if kind == APPEND:
                appends.append(body)
                continue
            self._append_all(appends, results)
            appends = []
            if kind == CLOSE:
                results.add(_failure(self.checkpoints.close))
                return results, True
            results.add(f"unknown request kind {kind}")
        self._append_all(appends, results)
        return results, False

    def _append_all(self, bodies: list[bytes], results: Results) -> None:
        if bodies:
            results.add(_failure(lambda: self._append(frame(bodies))), len(bodies))

    def _append(self, data: bytes) -> None:
        self.checkpoints.check_appends()
        self.segments.append(data)


def _failure(action: Callable[[], None]) -> str | None:
    try:
        action()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def serve(writer: Writer, output: Callable[[bytes], None], source: int = 0) -> bool:
    """Answer requests from `source` until CLOSE (True) or until the input ends (False)."""
    buffer = bytearray()
    while True:
        chunk = os.read(source, READ_BYTES)
        if not chunk:
            return False
        buffer += chunk
        requests, used = split_requests(buffer)
        del buffer[:used]
        if requests:
            results, closed = writer.answer(requests)
            output(results.encode())
            if closed:
                return True


def main(argv: list[str]) -> int:
    path, checkpointed, settings = parse_log_writer_argv(argv)
    logging.basicConfig(level=logging.INFO, format="replica log writer: %(message)s")
    lock = threading.Lock()  # results and checkpoint lines, each whole

    def output(data: bytes) -> None:
        with lock:
            write_all(1, data)

    try:
        segments = SegmentLog(path, checkpointed, settings)
        checkpointer = Checkpointer(path, settings.map_size)
        checkpoints = CheckpointSchedule(
            segments, checkpointer, settings.checkpoint_interval_s, output
        )
    except Exception as exc:
        output(result_line(f"{type(exc).__name__}: {exc}"))
        return 1
    output(READY)
    checkpoints.start()
    if serve(Writer(segments, checkpoints), output):
        return 0
    os._exit(0)  # the node is gone: leave a checkpoint in flight unfinished, as a kill would


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
