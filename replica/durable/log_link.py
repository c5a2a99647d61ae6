"""The node's end of its log writer's pipe: commits down, results back (`pipe_protocol`).

A commit (`submit`) is written to the pipe without blocking (what the pipe
cannot take waits in a buffer for the loop to say it can) and its `done`
callback is called, on the loop, when the writer's result for it comes back,
in the order the commits were sent.  Only `close` blocks: it waits for the
writer's final checkpoint.  This module knows the writer by its pipe alone,
so the node never imports the writer's code.

A writer that exits unexpectedly fails every commit still waiting for it;
the next commit starts a new one, which opens a new segment and takes over
checkpointing whatever its predecessor left.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from replica.durable.pipe_protocol import (
    APPEND,
    CLOSE,
    LOG_WRITER,
    READY,
    LogSettings,
    encode_request,
    log_writer_argv,
    parse_checkpoint_line,
    parse_result,
)
from replica.fd_io import write_all

log = logging.getLogger("replica.durable.log_link")

Done = Callable[[str | None], None]
"""Called with None once a commit is durable, or with why it is not."""
START_TIMEOUT_S = 60.0  # a new segment is zero-filled and synced before `ready`
CLOSE_TIMEOUT_S = 600.0  # closing checkpoints everything the log holds
READ_BYTES = 1 << 16


class LogFailed(Exception):
    """The writer did not carry a request out; `str()` says why."""


class LogLink:
    """A running log writer for the data dir at `path`, and the requests waiting on it."""

    def __init__(
        self,
        path: Path,
        lock_fd: int,
        settings: LogSettings,
        checkpointed: Callable[[], int],
    ) -> None:
        self.path = path
        self.settings = settings
        self._lock_fd = lock_fd
        self._checkpointed = checkpointed  # read afresh for every writer started
        self._process: subprocess.Popen[bytes] | None = None
        # Set while serving a loop.  Any: uvloop's add/remove_reader return None where typeshed
        # says bool, and compiled code checks the declared result of a call.
        self._loop: Any = None
        self._waiting: collections.deque[Done] = collections.deque()
        self._inbox = bytearray()  # results read, not yet a whole line
        self._outbox = bytearray()  # requests the pipe could not take yet
        self.restarts = 0
        self.checkpoints = 0  # that wrote something, by every writer this link started
        self.checkpoint_failures = 0
        self.last_checkpoint: dict[str, Any] | None = None  # {"keys", "ms", "error"}

    # -- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer and wait for its `ready`; LogFailed if it does not come."""
        if self._process is not None:
            return
        argv = [
            sys.executable,
            "-m",
            LOG_WRITER,
            *log_writer_argv(self.path, self._checkpointed(), self.settings),
        ]
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(self._lock_fd,),
            start_new_session=True,
            bufsize=0,
        )
        self._inbox.clear()
        line = self._read_line(START_TIMEOUT_S)
        if line != READY:
            self._reap()
            why = line.decode(errors="replace").strip().removeprefix("error 1 ")
            raise LogFailed(f"the log writer did not start: {why or 'it exited'}")

    # -- blocking ---------------------------------------------------------------------------

    def _request(self, kind: int, body: bytes) -> None:
        """Send one request and block for its result; LogFailed if it is not carried out."""
        self.start()
        try:
            write_all(self._stdin(), encode_request(kind, body))
        except OSError as exc:
            self._reap()
            raise LogFailed(f"cannot reach the log writer: {exc}") from None
        while True:
            line = self._read_line(CLOSE_TIMEOUT_S)
            if self._note_checkpoint(line):
                continue
            count, why = parse_result(line)
            if count is None:
                self._reap()
                raise LogFailed("the log writer exited")
            break
        if why is not None:
            raise LogFailed(why)

    def _read_line(self, timeout: float | None) -> bytes:
        """The next result line, blocking; b"" when the writer exited or timed out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self._stdout()
        while b"\n" not in self._inbox:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return b""
            chunk = os.read(fd, READ_BYTES)
            if not chunk:
                return b""
            self._inbox += chunk
        end = self._inbox.index(b"\n") + 1
        line = bytes(self._inbox[:end])
        del self._inbox[:end]
        return line

    # -- on the event loop -------------------------------------------------------------------

    def submit(self, record: bytes, done: Done) -> None:
        """Append `record` to the log; `done` is called on the loop with the result."""
        if self._loop is None:
            self._attach(asyncio.get_running_loop())
        elif self._process is None:
            self._restart()
        self._waiting.append(done)
        self._send(encode_request(APPEND, record))

    def _attach(self, loop: Any) -> None:
        self.start()
        self._loop = loop
        os.set_blocking(self._stdin(), False)
        os.set_blocking(self._stdout(), False)
        loop.add_reader(self._stdout(), self._readable)

    def _restart(self) -> None:
        """A new writer after the last one died (its loop reader went with it)."""
        loop, self._loop = self._loop, None
        assert loop is not None
        self.restarts += 1
        log.warning("starting a new log writer (restart %d)", self.restarts)
        try:
            self._attach(loop)
        except LogFailed:
            self._loop = loop  # stays on the loop: the commit fails and a later one retries
            raise

    def _send(self, data: bytes) -> None:
        if self._outbox:
            self._outbox += data
            return
        try:
            written = os.write(self._stdin(), data)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._died(f"cannot reach the log writer: {exc}")
            return
        if written < len(data):
            self._outbox += data[written:]
            assert self._loop is not None
            self._loop.add_writer(self._stdin(), self._writable)

    def _writable(self) -> None:
        try:
            written = os.write(self._stdin(), self._outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            self._died(f"cannot reach the log writer: {exc}")
            return
        del self._outbox[:written]
        if not self._outbox and self._loop is not None:
            self._loop.remove_writer(self._stdin())

    def _readable(self) -> None:
        try:
            chunk = os.read(self._stdout(), READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            chunk = b""
            log.error("cannot read the log writer's results: %s", exc)
        if not chunk:
            self._died("the log writer exited")
            return
        self._inbox += chunk
        end = self._inbox.rfind(b"\n") + 1
        if not end:
            return
        lines = bytes(self._inbox[:end]).splitlines()
        del self._inbox[:end]
        waiting = self._waiting
        for line in lines:
            if self._note_checkpoint(line):
                continue
            count, why = parse_result(line)
            for _ in range(count or 0):
                waiting.popleft()(why)

    def _note_checkpoint(self, line: bytes) -> bool:
        """Count a checkpoint line for `status`; False when `line` is not one."""
        report = parse_checkpoint_line(line)
        if report is None:
            return False
        self.last_checkpoint = report
        if report.get("error") is None:
            self.checkpoints += 1
        else:
            self.checkpoint_failures += 1
        return True

    def _died(self, why: str) -> None:
        """Fail every commit still waiting; the next submit starts a new writer."""
        log.error("%s; %d commits not durable", why, len(self._waiting))
        self._detach()
        self._reap()
        waiting, self._waiting = self._waiting, collections.deque()
        for done in waiting:
            done(why)

    def _detach(self) -> None:
        if self._loop is None or self._process is None:
            return
        self._loop.remove_reader(self._stdout())
        self._loop.remove_writer(self._stdin())
        self._outbox.clear()

    # -- stopping ----------------------------------------------------------------------------

    def close(self) -> None:
        """Have the writer checkpoint everything and exit; LogFailed if the checkpoint fails.

        Commits still on their way fail ("the store closed"), and so does the
        close: the writer is stopped without a checkpoint, since the pipe may
        hold part of a request, and the log keeps every commit it acknowledged.
        """
        unfinished = bool(self._waiting or self._outbox)
        self._detach()
        self._loop = None
        waiting, self._waiting = self._waiting, collections.deque()
        for done in waiting:
            done("the store closed")
        if self._process is None:
            return
        if unfinished:
            self._reap()
            raise LogFailed("commits were still on their way at close")
        os.set_blocking(self._stdin(), True)
        os.set_blocking(self._stdout(), True)
        try:
            self._request(CLOSE, b"")
        finally:
            self._reap(wait_s=CLOSE_TIMEOUT_S)

    def _reap(self, wait_s: float = 0.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _stdin(self) -> int:
        assert self._process is not None and self._process.stdin is not None
        return self._process.stdin.fileno()

    def _stdout(self) -> int:
        assert self._process is not None and self._process.stdout is not None
        return self._process.stdout.fileno()
