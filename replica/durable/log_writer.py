"""The log writer: a process of its own that makes a durable node's commits durable.

A commit is durable once it is appended to the commit log with one `pwrite`
of an O_DSYNC file (`replica.durable.commit_log`): 0.15-0.3 ms of disk.  A thread of
the node can wait for that without the interpreter lock, but it must take the
lock back after every call it makes, and a busy event loop hands it over only
at a switch interval: under 16 x 16 mv_write a commit took 2.8 ms from start
to acknowledgement, ten times the disk's time, and the node served 0.56 of
its in-memory rate.  In a process of its own the writer never waits for the
node's interpreter.  The node writes each commit down a pipe and reads its
acknowledgement as one more event of its loop; commits can follow each other
without waiting, and the writer appends everything that has arrived with one
`pwrite`, a group commit over the node's commits.

The writer owns the log: it opens a new segment when it starts (an old one's
tail may be torn: it seals it, see `replica.durable.log_recovery`), and a checkpoint
thread, every few seconds or once the segment is large, moves appends to the
next segment and has the checkpointer process (`replica.durable.checkpointer`) write
the closed ones into LMDB, then deletes them.  Each segment is listed in the
manifest (`replica.durable.log_manifest`) before its first append and sealed there
with its length when appends move on.

A checkpointer that dies is replaced at once and the checkpoint retried.
While checkpoints fail, appends go on as long as the log is not at risk
(`Log.at_risk`): it has not outgrown `MAX_LOG_SEGMENTS` segments, which a
restart replays and one checkpoint must take, and the disk keeps
`FREE_RESERVE` bytes, room for the checkpoint that ends the failures.  Past
that, appends are refused (`CheckpointFailed`) until a checkpoint succeeds.
Every segment's zeros fit the disk (`replica.durable.commit_log.fitting_preallocation`).

Protocol.  The node sends requests, each `u32 LE length | kind | body`:
`APPEND` (the body is one log record), `CHECKPOINT` and `CLOSE` (no body).
The writer answers `ready` once it has its segment (or `error 1 <why>` and
exits), then one result per request, in order, consecutive ones folded into
a line: `ok <n>` or `error <n> <why>`.  After `CLOSE` it checkpoints
everything, answers, and exits.  Between results it may send a line of its
own after each checkpoint, `checkpoint {"keys", "ms", "error"}`, which the
node counts for `status`.

Lifetime.  When its input ends without `CLOSE` the node is gone, so it exits
at once: nothing it had not acknowledged was promised to anyone.  It inherits
the descriptor that holds the data dir's lock and keeps it until it exits, so
a node restarted after a kill -9 cannot read the log while the writer of its
previous life might still append to it.  It runs in a session of its own, so
a terminal's Ctrl-C reaches the node, which closes it properly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from replica.durable.checkpointer import Checkpointer, CheckpointerGone, CheckpointFailed
from replica.durable.commit_log import (
    FILL_CHUNK,
    Segment,
    fitting_preallocation,
    frame,
    free_bytes,
    remove_segments,
    truncate_segment,
)
from replica.durable.log_recovery import recover_log

log = logging.getLogger("replica.durable.log_writer")

REQUEST = struct.Struct("<IB")
"""A request's header: the body's length, then its kind."""
APPEND, CHECKPOINT, CLOSE = 1, 2, 3
READY = b"ready\n"
CHECKPOINT_LINE = b"checkpoint "
"""Starts a line the writer sends of its own after a checkpoint: JSON `{keys, ms, error}`."""
READ_BYTES = 1 << 20
MAX_LOG_SEGMENTS = 4
"""While checkpoints fail, appends go on until the log holds this many segments' worth."""
FREE_RESERVE = 8 << 20
"""While checkpoints fail, appends stop when the disk has less than this free."""


@dataclass(frozen=True)
class LogSettings:
    map_size: int  # LMDB's, for the checkpointer
    segment_bytes: int  # a segment this large is closed at once
    checkpoint_interval_s: float
    preallocate: bool  # zero-fill new segments (halves the cost of a sync); see _preallocation

    def to_args(self) -> list[str]:
        return [
            f"--map-size={self.map_size}",
            f"--segment-bytes={self.segment_bytes}",
            f"--checkpoint-interval={self.checkpoint_interval_s}",
            f"--preallocate={int(self.preallocate)}",
        ]


def encode_request(kind: int, body: bytes = b"") -> bytes:
    return REQUEST.pack(len(body), kind) + body


def checkpoint_line(keys: int, started: float, failure: str | None) -> bytes:
    """What the writer tells the node of a checkpoint, between its results."""
    ms = round((time.monotonic() - started) * 1000, 1)
    return CHECKPOINT_LINE + orjson.dumps({"keys": keys, "ms": ms, "error": failure}) + b"\n"


# -- the log ---------------------------------------------------------------------------------


class Log:
    """The segments of a data dir: appends go to the newest, checkpoints take the others."""

    def __init__(
        self,
        path: Path,
        checkpointed: int,
        settings: LogSettings,
        report: Callable[[bytes], None] = lambda line: None,
    ) -> None:
        self.path = path
        self.settings = settings
        self._report = report  # a `checkpoint` line after each checkpoint that wrote or failed
        self._manifest = recover_log(path, checkpointed, required=True, read_sealed=False).manifest
        self._sealed = list(self._manifest.segments)  # every one sealed by the recovery
        seq = max([checkpointed, *self._sealed]) + 1
        first = self._fitting(settings.segment_bytes if settings.preallocate else 0)
        self._segment: Segment | None = Segment.create(path, seq, first)
        self._manifest.add(seq, first)
        self._manifest.save(path)
        self._checkpointer = Checkpointer(path, settings.map_size)
        self._append_lock = threading.Lock()  # the current segment
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time
        self._failure: str | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._checkpoint_forever, name="checkpoint")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def append(self, data: bytes) -> None:
        """Framed records to the current segment, synced.

        After a failed append the segment's tail is unknown, so it takes no
        more (see `Segment.append`) and the checkpoint thread is woken to move
        appends to the next one.
        """
        if self._failure is not None and self.at_risk():
            raise CheckpointFailed(f"checkpoints are failing: {self._failure}")
        with self._append_lock:
            segment = self._segment
            if segment is None:
                raise CheckpointFailed("the log is closed")
            try:
                segment.append(data)
            except BaseException:
                self._wake.set()
                raise
            full = segment.size >= self.settings.segment_bytes
        if full:
            self._wake.set()

    def checkpoint(self, *, final: bool = False, paced: bool = False) -> None:
        """Move appends to a new segment, write the closed ones to LMDB, delete them.

        `final` closes the log without opening a new segment.  A failure is
        remembered until a checkpoint succeeds, and refuses appends while the
        log is at risk.
        """
        with self._checkpoint_lock:
            started = time.monotonic()
            try:
                self._rotate(final, paced)
                if self._sealed:
                    keys = self._write_sealed(paced)
                    remove_segments(self.path, self._sealed)
                    self._manifest.drop(self._sealed)
                    self._sealed = []
                    self._manifest.save(self.path)
                    self._report(checkpoint_line(keys, started, None))
            except Exception as exc:
                self._failure = f"{type(exc).__name__}: {exc}"
                self._report(checkpoint_line(0, started, self._failure))
                raise
            self._failure = None

    def at_risk(self) -> bool:
        """Whether the log must stop growing until a checkpoint succeeds (see the module doc)."""
        segment = self._segment
        size = self._manifest.sealed_bytes() + (segment.size if segment else 0)
        if size > MAX_LOG_SEGMENTS * self.settings.segment_bytes:
            return True
        try:
            return free_bytes(self.path) < FREE_RESERVE
        except OSError:
            return True

    def _write_sealed(self, paced: bool) -> int:
        """The sealed segments into LMDB; a checkpointer found dead is replaced and asked again."""
        try:
            return self._checkpointer.checkpoint(self._sealed, paced=paced)
        except CheckpointerGone as exc:
            log.warning("%s: starting a new checkpointer", exc)
            return self._checkpointer.checkpoint(self._sealed, paced=paced)

    def close(self) -> None:
        """Stop the checkpoint thread and checkpoint everything: the next start replays nothing."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.checkpoint(final=True)
        finally:
            self._checkpointer.close()

    def _rotate(self, final: bool, paced: bool) -> None:
        current = self._segment
        if current is None or (not final and current.size == 0 and not current.broken):
            return
        following = None
        if not final:  # made and listed outside the lock: appends go on meanwhile
            size = self._preallocation(current.size)
            following = Segment.create(self.path, current.seq + 1, size, paced=paced)
            self._manifest.add(following.seq, size)
            try:
                self._manifest.save(self.path)
            except BaseException:
                self._manifest.drop([following.seq])
                following.close()
                following.path.unlink(missing_ok=True)
                raise
        with self._append_lock:
            self._segment = following
        current.close()
        self._manifest.seal(current.seq, current.size)
        self._sealed.append(current.seq)
        self._manifest.save(self.path)
        if current.broken:  # what follows its records is a batch never acknowledged
            with contextlib.suppress(OSError):  # else recovery cuts it, as it would a torn tail
                truncate_segment(current.path, current.size)

    def _preallocation(self, used: int) -> int:
        """Zeros for a segment that follows one that took `used` bytes: twice that.

        Whole megabytes, at least one, at most a segment, and no more than
        the free space allows (`_fitting`): a lightly loaded
        node does not write 32 MiB of zeros every checkpoint interval, and
        one under steady load gets a whole segment's.  A load that grows
        faster appends past the zeros until the next checkpoint, each sync
        then also writing the file's block map.  (Closing such a segment at
        once made more checkpoints, each rewriting most of LMDB's pages:
        0.41-0.43 CPU outside the node instead of 0.24-0.27.)
        """
        if not self.settings.preallocate:
            return 0
        wanted = -(-2 * used // FILL_CHUNK) * FILL_CHUNK
        return self._fitting(min(self.settings.segment_bytes, max(FILL_CHUNK, wanted)))

    def _fitting(self, wanted: int) -> int:
        """As much of `wanted` as leaves the disk room (a quarter of what is free at most)."""
        return fitting_preallocation(wanted, free_bytes(self.path)) if wanted else 0

    def _checkpoint_forever(self) -> None:
        while True:
            self._wake.wait(self.settings.checkpoint_interval_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.checkpoint(paced=True)  # the node is serving: leave the disk to appends
            except Exception:
                log.error("checkpoint failed: %s", self._failure)


# -- serving the node ------------------------------------------------------------------------


class Results:
    """The answers to a read's worth of requests, consecutive ones alike folded into a line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, int]] = []

    def add(self, failure: str | None, count: int = 1) -> None:
        line = "ok" if failure is None else "error " + failure.replace("\n", " ")
        if self.lines and self.lines[-1][0] == line:
            count += self.lines.pop()[1]
        self.lines.append((line, count))

    def encode(self) -> bytes:
        return b"".join(_result_line(line, count) for line, count in self.lines)


def _result_line(line: str, count: int) -> bytes:
    status, _, why = line.partition(" ")
    return f"{status} {count}{' ' + why if why else ''}\n".encode()


def split_requests(buffer: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The whole requests at the start of `buffer`, and how many bytes they took."""
    requests, pos, head = [], 0, REQUEST.size
    while len(buffer) - pos >= head:
        length, kind = REQUEST.unpack_from(buffer, pos)
        end = pos + head + length
        if end > len(buffer):
            break
        requests.append((kind, bytes(buffer[pos + head : end])))
        pos = end
    return requests, pos


def answer(log_: Log, requests: list[tuple[int, bytes]]) -> tuple[Results, bool]:
    """Carry the requests out in order; True when one of them closed the log.

    Consecutive appends are written together: one `pwrite`, one sync.
    """
    results, appends = Results(), []
    for kind, body in requests:
        if kind == APPEND:
            appends.append(body)
            continue
        _append_all(log_, appends, results)
        appends = []
        if kind == CHECKPOINT:
            results.add(_failure(log_.checkpoint))
        elif kind == CLOSE:
            results.add(_failure(log_.close))
            return results, True
        else:
            results.add(f"unknown request kind {kind}")
    _append_all(log_, appends, results)
    return results, False


def _append_all(log_: Log, bodies: list[bytes], results: Results) -> None:
    if bodies:
        results.add(_failure(lambda: log_.append(frame(bodies))), len(bodies))


def _failure(action: Callable[[], None]) -> str | None:
    try:
        action()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def serve(log_: Log, output: Callable[[bytes], None], source: int = 0) -> bool:
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
            results, closed = answer(log_, requests)
            output(results.encode())
            if closed:
                return True


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd`, however many writes a pipe takes."""
    with memoryview(data) as view:
        written = 0
        while written < len(data):
            written += os.write(fd, view[written:])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m replica.durable.log_writer")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("checkpointed", type=int, help="the newest segment LMDB holds")
    parser.add_argument("--map-size", type=int, required=True)
    parser.add_argument("--segment-bytes", type=int, required=True)
    parser.add_argument("--checkpoint-interval", type=float, required=True)
    parser.add_argument("--preallocate", type=int, choices=(0, 1), required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="replica log writer: %(message)s")
    settings = LogSettings(
        args.map_size, args.segment_bytes, args.checkpoint_interval, bool(args.preallocate)
    )
    lock = threading.Lock()  # results and checkpoint lines, each whole

    def output(data: bytes) -> None:
        with lock:
            write_all(1, data)

    try:
        log_ = Log(args.data_dir, args.checkpointed, settings, output)
    except Exception as exc:
        output(_result_line(f"error {type(exc).__name__}: {exc}", 1))
        return 1
    output(READY)
    log_.start()
    if serve(log_, output):
        return 0
    os._exit(0)  # the node is gone: leave a checkpoint in flight unfinished, as a kill would


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
