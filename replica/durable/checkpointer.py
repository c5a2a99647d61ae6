"""The checkpointer: a process of its own that writes sealed log segments into LMDB.

A checkpoint reads every record of the segments it covers back, and puts
each key's latest state into LMDB: a few microseconds of Python per key.  On
a thread of the node that work competed for the node's one interpreter lock
with every request, which cost a durable node under load about a fifth of
its throughput and put 10-35 ms spikes into its p99; on a thread of the log
writer it would delay the writer's acknowledgements the same way.  As a
separate process it runs on the machine's other core instead.

The log writer (`replica.durable.log_writer`) talks to it over a pipe: one line per checkpoint, the
sequence numbers of the sealed segments separated by spaces, after the word
`paced` for a background checkpoint (see `write_sealed`); the answer is
`ok <keys written>` once the last LMDB transaction carrying them is synced
(it also records the newest segment covered), or `error <text>`.  The checkpointer
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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from replica.durable.commit_log import read_segment, segment_name
from replica.durable.records import KEYSPACES, db_key_of, encode_stored, log_entries

STOP_TIMEOUT_S = 30.0
CHUNK_KEYS = 10_000
"""Keys a checkpoint puts in one LMDB transaction: about a megabyte of pages to sync."""
PACED = "paced"
"""The first word of a checkpoint request that should leave the disk to appends."""
CHECKPOINT_NICENESS = 10
CHECKPOINT_KEY = b"checkpointed_segment"
"""The meta key of the newest segment LMDB holds, written by each checkpoint's transaction."""


class CheckpointFailed(Exception):
    """A checkpoint did not reach LMDB; `str()` says why."""


class CheckpointerGone(CheckpointFailed):
    """The checkpointer process exited or could not be reached: a new one may succeed."""


class Checkpointer:
    """The log writer's handle on its checkpointer process, started at the first checkpoint."""

    def __init__(self, path: Path, map_size: int) -> None:
        self.path = path
        self.map_size = map_size
        self._process: subprocess.Popen[bytes] | None = None

    def checkpoint(self, seqs: list[int], *, paced: bool = False) -> int:
        """Have `seqs` written to LMDB (see `write_sealed`): the keys written; CheckpointFailed."""
        process = self._running()
        stdin, stdout = _pipes(process)
        words = [PACED] * paced + [str(seq) for seq in seqs]
        try:
            stdin.write(" ".join(words).encode() + b"\n")
            stdin.flush()
            reply = stdout.readline()
        except OSError as exc:
            reply = b""
            failure = f"cannot reach the checkpointer: {exc}"
        else:
            failure = "the checkpointer exited"
        if reply.startswith(b"ok "):
            return int(reply.split()[1])
        if not reply:
            self._reap()
            raise CheckpointerGone(failure)
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
                "replica.durable.checkpointer",
                str(self.path),
                str(self.map_size),
                str(os.getpid()),
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


def write_sealed(
    env: Any,
    path: Path,
    seqs: list[int],
    *,
    paced: bool = False,
    chunk_keys: int = CHUNK_KEYS,
    writer_alive: Callable[[], bool] = lambda: True,
) -> int:
    """The latest state of each key in segments `seqs` into LMDB, `chunk_keys` keys a transaction.

    Returns how many keys it wrote (or removed).

    Only a key's latest state is written, in key order, so a key written a
    hundred times since the last checkpoint costs one put.  The transactions
    are paced: after each one the checkpointer waits as long as its commit
    took, when `paced` (the log writer's periodic checkpoints), so the
    writer's synced appends never queue behind more than one chunk's pages
    (one transaction for everything put 20-60 ms bursts into the node's
    commit latency).  Checkpoints at start and at close go at full speed.
    Only the last transaction records the newest segment covered; a crash
    before it leaves LMDB holding some states the segments also hold, which
    the next start replays over them, harmlessly.

    Each transaction first checks `writer_alive`, holding LMDB's write lock:
    once the log writer is gone a restarted node may be checkpointing the
    same segments with newer ones after them, and a chunk of this older
    checkpoint committed after that would put older states back.
    """
    latest = _latest_states(path, seqs, env.max_key_size())
    chunks = [chunk for keyspace in KEYSPACES for chunk in _chunks(keyspace, latest, chunk_keys)]
    chunks = chunks or [(KEYSPACES[0], [])]
    for i, (keyspace, items) in enumerate(chunks):
        last = i == len(chunks) - 1
        started = time.monotonic()
        _write_chunk(env, keyspace, items, seqs[-1] if last else None, writer_alive)
        if paced and not last:
            time.sleep(time.monotonic() - started)
    return sum(len(items) for _, items in chunks)


def _write_chunk(
    env: Any,
    keyspace: str,
    items: list[tuple[bytes, bytes | None]],
    covered: int | None,
    writer_alive: Callable[[], bool],
) -> None:
    """One synced transaction: `items` into `keyspace`, and the newest segment `covered`."""
    with env.begin(write=True) as txn:
        if not writer_alive():
            raise CheckpointFailed("the log writer is gone: checkpoint abandoned")
        db = env.open_db(keyspace.encode(), txn=txn)
        puts = [(db_key, value) for db_key, value in items if value is not None]
        if puts:
            with txn.cursor(db=db) as cursor:
                cursor.putmulti(puts)
        for db_key, value in items:
            if value is None:
                txn.delete(db_key, db=db)
        if covered is not None:
            txn.put(CHECKPOINT_KEY, str(covered).encode(), db=env.open_db(b"meta", txn=txn))


def _latest_states(
    path: Path, seqs: list[int], max_key: int
) -> dict[str, dict[bytes, bytes | None]]:
    """{keyspace: {LMDB key: LMDB value, None when the key is gone}} of each key's last entry.

    Read newest first, so only the entry that stays is encoded.
    """
    latest: dict[str, dict[bytes, bytes | None]] = {keyspace: {} for keyspace in KEYSPACES}
    for seq in reversed(seqs):
        for payload in reversed(read_segment(path / segment_name(seq), cut_tail=False)):
            for keyspace, key, stored in reversed(log_entries(payload)):
                seen = latest[keyspace]
                db_key = db_key_of(key.encode(), max_key)
                if db_key not in seen:
                    seen[db_key] = None if stored is None else encode_stored(keyspace, key, stored)
    return latest


def _chunks(
    keyspace: str, latest: dict[str, dict[bytes, bytes | None]], size: int
) -> Iterator[tuple[str, list[tuple[bytes, bytes | None]]]]:
    items = sorted(latest[keyspace].items())
    for start in range(0, len(items), size):
        yield keyspace, items[start : start + size]


def main(argv: list[str]) -> int:

    with contextlib.suppress(OSError):
        os.nice(CHECKPOINT_NICENESS)  # background work: the node and its log writer come first
    path, map_size, writer = Path(argv[0]), int(argv[1]), int(argv[2])

    def writer_alive() -> bool:
        return os.getppid() == writer  # a process whose parent exits gets a new one

    try:
        env = open_environment(path, map_size)
    except Exception as exc:  # each request hears why, rather than a traceback on stderr
        failure = f"error cannot open LMDB in {path}: {exc}".replace("\n", " ").encode()
        for _ in sys.stdin.buffer:
            sys.stdout.buffer.write(failure + b"\n")
            sys.stdout.buffer.flush()
        return 1
    try:
        for line in sys.stdin.buffer:
            try:
                words = line.decode().split()
                paced = words[:1] == [PACED]
                seqs = [int(seq) for seq in words[paced:]]
                keys = write_sealed(env, path, seqs, paced=paced, writer_alive=writer_alive)
            except Exception as exc:
                reply = f"error {type(exc).__name__}: {exc}".replace("\n", " ")
            else:
                reply = f"ok {keys}"
            sys.stdout.buffer.write(reply.encode() + b"\n")
            sys.stdout.buffer.flush()
    finally:
        env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
