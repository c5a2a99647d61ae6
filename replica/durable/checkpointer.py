"""The checkpointer process: writes the log writer's sealed segments into LMDB, one request a line.

A checkpoint decodes every record of the segments it covers and encodes each
key's latest state again: Python work that, on a thread of the log writer,
would hold the interpreter the writer needs to acknowledge commits.  As a
process of its own it runs on another core, at niceness 10: background work.

It never deletes a segment (the writer does, after `ok`), and it exits when
its input ends.  Each LMDB transaction first checks that its writer is still
its parent: a node killed with SIGKILL leaves at most one transaction
finishing behind it, which a restarted node finds either done (and replays
those segments again, harmlessly) or not begun.  It runs in a session of its
own, so a terminal's Ctrl-C reaches the node, which checkpoints once more
before it stops, and not the checkpointer.  The pipe is `pipe_protocol`'s.
"""

from __future__ import annotations

import contextlib
import os
import sys

from replica.durable.lmdb_checkpoint import open_environment, write_sealed
from replica.durable.pipe_protocol import (
    checkpoint_reply,
    parse_checkpoint_request,
    parse_checkpointer_argv,
)

CHECKPOINT_NICENESS = 10


def main(argv: list[str]) -> int:
    with contextlib.suppress(OSError):
        os.nice(CHECKPOINT_NICENESS)  # background work: the node and its log writer come first
    path, map_size, writer = parse_checkpointer_argv(argv)

    def writer_alive() -> bool:
        return os.getppid() == writer  # a process whose parent exits gets a new one

    output = sys.stdout.buffer
    try:
        env = open_environment(path, map_size)
    except Exception as exc:  # each request hears why, rather than a traceback on stderr
        failure = checkpoint_reply(None, f"cannot open LMDB in {path}: {exc}")
        for _ in sys.stdin.buffer:
            output.write(failure)
            output.flush()
        return 1
    try:
        for line in sys.stdin.buffer:
            try:
                seqs, paced = parse_checkpoint_request(line)
                keys = write_sealed(env, path, seqs, paced=paced, writer_alive=writer_alive)
            except Exception as exc:
                reply = checkpoint_reply(None, f"{type(exc).__name__}: {exc}")
            else:
                reply = checkpoint_reply(keys)
            output.write(reply)
            output.flush()
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
