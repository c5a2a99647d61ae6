"""The checkpointer: a process of its own that writes sealed log segments into LMDB.

A checkpoint reads every record of the segments it covers back, and puts
each key's latest state into LMDB: a few microseconds of Python per key.  On
a thread of the node that work competed for the node's one interpreter lock
with every request, which cost a durable node under load about a fifth of
its throughput and put 10-35 ms spikes into its p99; on a thread of the log
writer it would delay the writer's acknowledgements the same way.  As a
separate process it runs on the machine's other core instead.

The log writer (`replica.log_writer`) talks to it over a pipe: one line per checkpoint, the
sequence numbers of the sealed segments separated by spaces; the answer is
`ok` once the LMDB transaction carrying all of them is synced (it also
records the newest segment covered), or `error <text>`.  The checkpointer
never deletes a segment, the writer does after `ok`, and it exits when its
input ends: a node killed with SIGKILL leaves at most one transaction
finishing behind it, which a restarted node finds either done (and replays
those segments again, harmlessly) or not begun.  It runs in a session of its
own, so a terminal's Ctrl-C reaches the node, which checkpoints once more
before it stops, and not the checkpointer.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from replica.commit_log import iter_segment, segment_name
from replica.records import KEYSPACES, db_key_of, encode_stored, log_entries

STOP_TIMEOUT_S = 30.0
CHECKPOINT_NICENESS = 10
CHECKPOINT_KEY = b"checkpointed_segment"
"""The meta key of the newest segment LMDB holds, written by each checkpoint's transaction."""


class CheckpointFailed(Exception):
    """A checkpoint did not reach LMDB; `str()` says why."""


class Checkpointer:
    """The log writer's handle on its checkpointer process, started at the first checkpoint."""

    def __init__(self, path: Path, map_size: int) -> None:
        self.path = path
        self.map_size = map_size
        self._process: subprocess.Popen[bytes] | None = None

    def checkpoint(self, seqs: list[int]) -> None:
        """Have `seqs` written to LMDB in one synced transaction; CheckpointFailed if not."""
        process = self._running()
        stdin, stdout = _pipes(process)
        try:
            stdin.write(" ".join(map(str, seqs)).encode() + b"\n")
            stdin.flush()
            reply = stdout.readline()
        except OSError as exc:
            reply = b""
            failure = f"cannot reach the checkpointer: {exc}"
        else:
            failure = "the checkpointer exited"
        if reply == b"ok\n":
            return
        if not reply:
            self._reap()
            raise CheckpointFailed(failure)
        raise CheckpointFailed(reply.decode(errors="replace").removeprefix("error ").strip())

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
            argv = [
                sys.executable,
                "-m",
                "replica.checkpointer",
                str(self.path),
                str(self.map_size),
            ]
            self._process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
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


# -- the process -----------------------------------------------------------------------------


def open_environment(path: Path, map_size: int) -> Any:
    """A data dir's LMDB environment, opened the same way by the node and its checkpointer.

    Synced commits: a checkpoint must be on disk before its segments are deleted.
    """
    import lmdb

    return lmdb.open(
        str(path),
        map_size=map_size,
        max_dbs=len(KEYSPACES) + 1,
        subdir=True,
        sync=True,
        metasync=True,
        readahead=False,
    )


def write_sealed(env: Any, path: Path, seqs: list[int]) -> None:
    """The records of segments `seqs` into LMDB, in log order, in one synced transaction.

    In log order, the latest record of a key is the one that stays.
    """
    max_key = env.max_key_size()
    with env.begin(write=True) as txn:
        dbs = {keyspace: env.open_db(keyspace.encode(), txn=txn) for keyspace in KEYSPACES}
        for seq in seqs:
            for payload in iter_segment(path / segment_name(seq)):
                for keyspace, key, stored in log_entries(payload):
                    db_key = db_key_of(key.encode(), max_key)
                    if stored is None:
                        txn.delete(db_key, db=dbs[keyspace])
                    else:
                        txn.put(db_key, encode_stored(keyspace, key, stored), db=dbs[keyspace])
        meta = env.open_db(b"meta", txn=txn)
        txn.put(CHECKPOINT_KEY, str(seqs[-1]).encode(), db=meta)


def main(argv: list[str]) -> int:

    with contextlib.suppress(OSError):
        os.nice(CHECKPOINT_NICENESS)  # background work: the node and its log writer come first
    path, map_size = Path(argv[0]), int(argv[1])
    env = open_environment(path, map_size)
    try:
        for line in sys.stdin.buffer:
            try:
                write_sealed(env, path, [int(seq) for seq in line.split()])
            except Exception as exc:
                reply = f"error {type(exc).__name__}: {exc}".replace("\n", " ")
            else:
                reply = "ok"
            sys.stdout.buffer.write(reply.encode() + b"\n")
            sys.stdout.buffer.flush()
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
