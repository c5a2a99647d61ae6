"""The segments of a data dir's commit log, as the log writer keeps them.

Appends go to the newest segment; `rotate` seals it (in the manifest, with
its length) and opens the next, and `drop_sealed` deletes the sealed ones
once a checkpoint has them in LMDB.  Each segment is listed in the manifest
(`replica.durable.log_manifest`) before its first append.  At start the log
opens a new segment: an old one's tail may be torn, and recovery
(`replica.durable.log_recovery`) seals it.

A new segment is zero-filled in advance (see `replica.durable.commit_log`),
twice as much as the segment before it took (`_preallocation`), and never
more than the disk can spare (`commit_log.fitting_preallocation`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path

from replica.durable.commit_log import (
    FILL_CHUNK,
    Segment,
    fitting_preallocation,
    free_bytes,
    remove_segments,
    truncate_segment,
)
from replica.durable.errors import CheckpointFailed
from replica.durable.log_recovery import recover_log
from replica.durable.pipe_protocol import LogSettings

MAX_LOG_SEGMENTS = 4
"""While checkpoints fail, appends go on until the log holds this many segments' worth."""
FREE_RESERVE = 8 << 20
"""While checkpoints fail, appends stop when the disk has less than this free."""


class SegmentLog:
    """The newest segment takes appends; the sealed ones wait for a checkpoint."""

    def __init__(
        self,
        path: Path,
        checkpointed: int,
        settings: LogSettings,
    ) -> None:
        self.path = path
        self.settings = settings
        self.on_full: Callable[[], None] = lambda: None  # full or broken: time to rotate
        self._manifest = recover_log(path, checkpointed, required=True, read_sealed=False).manifest
        self.sealed = list(self._manifest.segments)  # every one sealed by the recovery
        seq = max([checkpointed, *self.sealed]) + 1
        first = self._fitting(settings.segment_bytes if settings.preallocate else 0)
        self._segment: Segment | None = Segment.create(path, seq, first)
        self._manifest.add(seq, first)
        self._manifest.save(path)
        self._lock = threading.Lock()  # the current segment

    def append(self, data: bytes) -> None:
        """Framed records to the current segment, synced.

        After a failed append the segment's tail is unknown, so it takes no
        more (see `Segment.append`) and `on_full` asks for a rotation.
        """
        with self._lock:
            segment = self._segment
            if segment is None:
                raise CheckpointFailed("the log is closed")
            try:
                segment.append(data)
            except BaseException:
                self.on_full()
                raise
            full = segment.size >= self.settings.segment_bytes
        if full:
            self.on_full()

    def rotate(self, *, final: bool = False, paced: bool = False) -> None:
        """Seal the current segment and open the next (none when `final`); no-op when empty."""
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
        with self._lock:
            self._segment = following
        current.close()
        self._manifest.seal(current.seq, current.size)
        self.sealed.append(current.seq)
        self._manifest.save(self.path)
        if current.broken:  # what follows its records is a batch never acknowledged
            with contextlib.suppress(OSError):  # else recovery cuts it, as it would a torn tail
                truncate_segment(current.path, current.size)

    def drop_sealed(self) -> None:
        """Delete the sealed segments: a checkpoint has every record of theirs in LMDB."""
        remove_segments(self.path, self.sealed)
        self._manifest.drop(self.sealed)
        self.sealed = []
        self._manifest.save(self.path)

    def at_risk(self) -> bool:
        """Whether the log must stop growing until a checkpoint succeeds.

        It has outgrown `MAX_LOG_SEGMENTS` segments, which a restart replays
        and one checkpoint must take, or the disk keeps less than
        `FREE_RESERVE` bytes, room for the checkpoint that ends the failures.
        """
        segment = self._segment
        size = self._manifest.sealed_bytes() + (segment.size if segment else 0)
        if size > MAX_LOG_SEGMENTS * self.settings.segment_bytes:
            return True
        try:
            return free_bytes(self.path) < FREE_RESERVE
        except OSError:
            return True

    def _preallocation(self, used: int) -> int:
        """Zeros for a segment that follows one that took `used` bytes: twice that.

        Whole megabytes, at least one, at most a segment, and no more than
        the free space allows: a lightly loaded node does not write a whole
        segment of zeros every checkpoint interval, and one under steady load
        gets a whole segment's.  A load that grows faster appends past the
        zeros until the next checkpoint (closing such a segment at once made
        more checkpoints, each rewriting most of LMDB's pages).
        """
        if not self.settings.preallocate:
            return 0
        wanted = -(-2 * used // FILL_CHUNK) * FILL_CHUNK
        return self._fitting(min(self.settings.segment_bytes, max(FILL_CHUNK, wanted)))

    def _fitting(self, wanted: int) -> int:
        """As much of `wanted` as leaves the disk room (a quarter of what is free at most)."""
        return fitting_preallocation(wanted, free_bytes(self.path)) if wanted else 0
