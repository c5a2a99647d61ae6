"""The log writer's handle on its checkpointer: sealed segments in, keys written out.

`Checkpointer` starts the checkpointer process (`replica.durable.checkpointer`)
at the first checkpoint and talks to it over `pipe_protocol`'s pipe; one
found dead raises `CheckpointerGone`, so the writer can start another and
ask again.  `ThreadCheckpointer` does the same work on the calling thread at
low priority, inside the writer's process: the variant the writer uses when
`REPLICA_CHECKPOINT_THREAD=1`, kept to measure the two against each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, Protocol

from replica.durable.errors import CheckpointFailed
from replica.durable.lmdb_checkpoint import open_environment, write_sealed
from replica.durable.pipe_protocol import (
    CHECKPOINTER,
    checkpointer_argv,
    encode_checkpoint_request,
    parse_checkpoint_reply,
)

STOP_TIMEOUT_S = 30.0
THREAD_NICENESS = 10


class CheckpointerGone(CheckpointFailed):
    """The checkpointer process exited or could not be reached: a new one may succeed."""


class CheckpointRunner(Protocol):
    def checkpoint(self, seqs: list[int], *, paced: bool = False) -> int: ...

    def close(self) -> None: ...


def checkpointer_for(path: Path, map_size: int) -> CheckpointRunner:
    if os.environ.get("REPLICA_CHECKPOINT_THREAD") == "1":
        return ThreadCheckpointer(path, map_size)
    return Checkpointer(path, map_size)


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


class ThreadCheckpointer:
    """The checkpoint on the calling thread, its scheduling priority lowered first."""

    def __init__(self, path: Path, map_size: int) -> None:
        self.path = path
        self.map_size = map_size
        self._env: Any = None

    def checkpoint(self, seqs: list[int], *, paced: bool = False) -> int:
        if self._env is None:
            self._env = open_environment(self.path, self.map_size)
        if paced:  # the background thread, never the one answering the node
            try:
                tid = threading.get_native_id()
                os.setpriority(
                    os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), THREAD_NICENESS)
                )
            except OSError:
                pass
        return write_sealed(self._env, self.path, seqs, paced=paced)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
