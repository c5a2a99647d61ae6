"""When the log writer checkpoints: every few seconds, when a segment is full, and at close.

A checkpoint rotates the log (`SegmentLog.rotate`), has the sealed segments
written into LMDB by the checkpointer (`replica.durable.checkpointer_link`),
then deletes them.  Periodic ones run on a thread of their own and are
paced, so the node's appends go on meanwhile; the one at close goes at full
speed, so the next start replays nothing.

A checkpointer that dies is replaced at once and the checkpoint retried.
A failure is remembered until a checkpoint succeeds; meanwhile appends go
on while the log is not at risk (`SegmentLog.at_risk`), and are refused
past that (`check_appends`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from replica.durable.checkpointer_link import Checkpointer, CheckpointerGone
from replica.durable.errors import CheckpointFailed
from replica.durable.pipe_protocol import checkpoint_line
from replica.durable.segment_log import SegmentLog

log = logging.getLogger("replica.durable.checkpoint_schedule")


class CheckpointSchedule:
    """The checkpoints of one log; `report` hears a `checkpoint` line after each that did work."""

    def __init__(
        self,
        segments: SegmentLog,
        checkpointer: Checkpointer,
        interval_s: float,
        report: Callable[[bytes], None] = lambda line: None,
    ) -> None:
        self._log = segments
        self._checkpointer = checkpointer
        self._interval = interval_s
        self._report = report
        self._lock = threading.Lock()  # one checkpoint at a time
        self._failure: str | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._forever, name="checkpoint", daemon=True)
        segments.on_full = self.wake

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Checkpoint now rather than at the end of the interval (a full or broken segment)."""
        self._wake.set()

    def check_appends(self) -> None:
        """CheckpointFailed when checkpoints fail and the log may not grow any more."""
        if self._failure is not None and self._log.at_risk():
            raise CheckpointFailed(f"checkpoints are failing: {self._failure}")

    def checkpoint(self, *, final: bool = False, paced: bool = False) -> None:
        """Rotate, write the sealed segments into LMDB, delete them; `final` opens no new one."""
        with self._lock:
            started = time.monotonic()
            try:
                self._log.rotate(final=final, paced=paced)
                if self._log.sealed:
                    keys = self._write_sealed(paced)
                    self._log.drop_sealed()
                    self._report(checkpoint_line(keys, _ms_since(started), None))
            except Exception as exc:
                self._failure = f"{type(exc).__name__}: {exc}"
                self._report(checkpoint_line(0, _ms_since(started), self._failure))
                raise
            self._failure = None

    def close(self) -> None:
        """Stop the periodic checkpoints and checkpoint everything."""
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        try:
            self.checkpoint(final=True)
        finally:
            self._checkpointer.close()

    def _write_sealed(self, paced: bool) -> int:
        try:
            return self._checkpointer.checkpoint(self._log.sealed, paced=paced)
        except CheckpointerGone as exc:
            log.warning("%s: starting a new checkpointer", exc)
            return self._checkpointer.checkpoint(self._log.sealed, paced=paced)

    def _forever(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.checkpoint(paced=True)  # the node is serving: leave the disk to appends
            except Exception:
                log.error("checkpoint failed: %s", self._failure)


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000
