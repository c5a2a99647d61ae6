"""The log writer's handle on its checkpointer process: sealed segments in, keys written out.

`Checkpointer` starts the checkpointer (`replica.durable.checkpointer`) at
the first checkpoint and talks to it over `pipe_protocol`'s pipe; one found
dead raises `CheckpointerGone`, so the writer can start another and ask
again.  A process rather than a thread of the writer: see docs/decisions.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import IO

from replica.durable.errors import CheckpointFailed
from replica.durable.pipe_protocol import (
    CHECKPOINTER,
    checkpointer_argv,
    encode_checkpoint_request,
    parse_checkpoint_reply,
)

STOP_TIMEOUT_S = 30.0


class CheckpointerGone(CheckpointFailed):
    """The checkpointer process exited or could not be reached: a new one may succeed."""


class Checkpointer:
    """A checkpointer process, started at the first checkpoint."""

    def __init__(self, path: Path, map_size: int) -> None:
        self.path = path
        self.map_size = map_size
        self._process: subprocess.Popen[bytes] | None = None

    def checkpoint(self, seqs: list[int], *, paced: bool = False) -> int:
        """Have `seqs` written to LMDB: the keys written; CheckpointFailed, or CheckpointerGone."""
        process = self._running()
        stdin, stdout = _pipes(process)
        try:
            stdin.write(encode_checkpoint_request(seqs, paced=paced))
            stdin.flush()
            reply = stdout.readline()
        except OSError as exc:
            reply = b""
            gone = f"cannot reach the checkpointer: {exc}"
        else:
            gone = "the checkpointer exited"
        keys, failure = parse_checkpoint_reply(reply)
        if keys is not None:
            return keys
        if failure is None:
            self._reap()
            raise CheckpointerGone(gone)
        raise CheckpointFailed(failure)

    def close(self) -> None:
        """End the checkpointer's input and wait for it to finish what it was doing."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._process is None or self._process.poll() is not None:
            self._reap()
            argv = checkpointer_argv(self.path, self.map_size, os.getpid())
            self._process = subprocess.Popen(
                [sys.executable, "-m", CHECKPOINTER, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
        return self._process

    def _reap(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()


def _pipes(process: subprocess.Popen[bytes]) -> tuple[IO[bytes], IO[bytes]]:
    assert process.stdin is not None and process.stdout is not None
    return process.stdin, process.stdout
