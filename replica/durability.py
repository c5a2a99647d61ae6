"""Group commit: the keys a loop turn changed reach disk in one synced batch.

Making a write durable costs a sync of the store's commit log (see
`replica.storage`), and a sync costs about as much for one key as for a few
hundred, so committing every write on its own would cap a node at a few
thousand writes a second.  Instead the node applies writes in memory, notes
which keys changed, and commits them together: the first change of a loop
turn schedules a commit, a worker thread runs it (the loop goes on serving
while the disk syncs), and whatever changes while it runs goes into the next
one.  States are encoded on the loop when their commit starts (encoding holds
the interpreter wherever it runs), so a key written ten times between two
commits is stored once.

Running the commit on the loop itself, as Redis does with `appendfsync
always`, measured the same under load (16 x 16 mv_write: 52-76k ops/s
inline against 61-76k threaded, alternating runs), so the worker stays: with
it a slow disk delays only the replies that wait for it, not every read.

In "sync" mode a transport asks `barrier()` after handling a chunk of input
and, when it gets a future, holds that chunk's replies until the future is
resolved, registering with `after_commit` to be called right after the
commit: nothing is acknowledged, to a client or to a peer's merge, before it
is on disk.  In "async" mode replies go out at once and commits run every
`flush_interval_ms`, so a crash can lose that window of acknowledged writes
(Redis's `appendfsync everysec` makes the same trade).

A commit that fails (a full disk, or a store whose checkpoints fail) fails
every barrier waiting on it, so their replies become errors; the keys stay
dirty and are retried.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any, cast

from replica.keyspaces import Keyspaces
from replica.storage import KeyRef, Record, Store, encode_state

log = logging.getLogger("replica.durability")

SYNC, ASYNC = "sync", "async"
MODES = (SYNC, ASYNC)
RETRY_AFTER_FAILURE_S = 1.0


class NotDurable(Exception):
    """A commit failed: the writes it carried must not be acknowledged."""


class Durability:
    """Commits the keyspaces' changes to `store` in batches; see the module docstring."""

    def __init__(
        self,
        keyspaces: Keyspaces,
        store: Store,
        *,
        mode: str = SYNC,
        flush_interval_ms: int = 10,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"durability mode must be one of {MODES}, not {mode!r}")
        self.keyspaces = keyspaces
        self.store = store
        self.mode = mode
        self.flush_interval = flush_interval_ms / 1000
        self.loop = loop or asyncio.get_running_loop()
        self._dirty: dict[KeyRef, None] = {}  # an ordered set
        self._changes = 0  # changes seen so far
        self._started = 0  # changes the latest commit to start carries
        self._durable = 0  # changes the last successful commit covered
        self._waiters: collections.deque[list[Any]] = collections.deque()  # [target, future]
        self._after_commit: dict[Callable[[], None], None] = {}
        self._committing: asyncio.Future[Any] | None = None  # the commit on the worker thread
        self._scheduled: asyncio.Handle | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")
        self.commits = 0
        self.keys_committed = 0
        self.failures = 0
        self.last_error: str | None = None
        self._closed = False
        keyspaces.listeners.append(self._changed)

    @property
    def holds_replies(self) -> bool:
        return self.mode == SYNC

    # -- changes -------------------------------------------------------------------------

    def _changed(self, keyspace: str, key: str, local: bool) -> None:
        self._dirty[(keyspace, key)] = None
        self._changes += 1
        if self._scheduled is None:
            self._schedule(self.flush_interval if self.mode == ASYNC else 0.0)

    def _schedule(self, delay: float) -> None:
        if self._closed or self._scheduled is not None or self._committing is not None:
            return  # a commit is on its way, and it (or the one after it) takes what is dirty
        if delay:
            self._scheduled = self.loop.call_later(delay, self._start_commit)
        else:
            self._scheduled = self.loop.call_soon(self._start_commit)

    def barrier(self) -> asyncio.Future[None] | None:
        """None when every change so far is durable; else a future resolved once it is.

        The future raises `NotDurable` when the commit carrying those changes
        fails.  Every change made before a commit starts goes into it, so all
        the barriers asked for between two commits share one future.
        """
        target = self._changes
        if self._durable >= target:
            return None
        if self._waiters and self._waiters[-1][0] > self._started:
            waiter = self._waiters[-1]  # no commit started since: the next one covers both
            waiter[0] = target
            return cast("asyncio.Future[None]", waiter[1])
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append([target, future])
        return future

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, right after the next commit ends, whatever its end.

        Transports release held replies from here rather than from a
        barrier's done callback, which would wait for another loop turn.
        """
        self._after_commit[callback] = None

    # -- commits -------------------------------------------------------------------------

    def _take_dirty(self) -> tuple[list[KeyRef], int]:
        refs = list(self._dirty)
        self._dirty = {}
        self._started = self._changes
        return refs, self._changes

    def _commit_now(self) -> None:
        """Encode, append and sync on the loop, then release what waited (at close)."""
        if not self._dirty:
            return
        refs, upto = self._take_dirty()
        try:
            self._write(*self._encode(refs))
        except Exception as exc:
            self._committed(refs, upto, _describe(exc))
        else:
            self._committed(refs, upto, None)

    def _start_commit(self) -> None:
        """Encode on the loop, hand the batch to the worker thread."""
        self._scheduled = None
        if self._committing is not None or not self._dirty:
            return
        refs, upto = self._take_dirty()
        commit: asyncio.Future[Any]
        try:
            records, removed = self._encode(refs)
        except Exception as exc:  # it fails its commit, as the disk would, not the loop
            commit = self.loop.create_future()
            commit.set_exception(exc)
        else:
            commit = self.loop.run_in_executor(self._executor, self._write, records, removed)
        self._committing = commit

        def done(finished: asyncio.Future[Any]) -> None:
            self._committing = None
            self._committed(refs, upto, _failure_of(finished))

        commit.add_done_callback(done)

    def _encode(self, refs: list[KeyRef]) -> tuple[list[Record], list[KeyRef]]:
        records: list[Record] = []
        removed: list[KeyRef] = []
        for keyspace, key in refs:
            state = getattr(self.keyspaces, keyspace).get(key)
            if state is None:
                removed.append((keyspace, key))
            else:
                records.append((keyspace, key, encode_state(keyspace, key, state)))
        return records, removed

    def _write(self, records: list[Record], removed: list[KeyRef]) -> None:
        """One batch to the store, which returns once it is on disk."""
        if records:
            self.store.store_batch(records)
        if removed:
            self.store.remove(removed)

    def _committed(self, refs: list[KeyRef], upto: int, error: str | None) -> None:
        if error is None:
            self._durable = upto
            self.commits += 1
            self.keys_committed += len(refs)
            while self._waiters and self._waiters[0][0] <= upto:
                future = self._waiters.popleft()[1]
                if not future.done():
                    future.set_result(None)
        else:
            self.failures += 1
            self.last_error = error
            log.error("commit of %d keys failed: %s", len(refs), error)
            for ref in refs:  # still in memory, still to be stored
                self._dirty.setdefault(ref, None)
            while self._waiters and self._waiters[0][0] <= upto:
                future = self._waiters.popleft()[1]
                if not future.done():
                    future.set_exception(NotDurable(error))
                    future.exception()  # its holders read it; a holder that went away need not
        callbacks, self._after_commit = self._after_commit, {}
        for callback in callbacks:
            callback()
        if error is not None:
            self._schedule(RETRY_AFTER_FAILURE_S)
        elif self._dirty:
            self._schedule(self.flush_interval if self.mode == ASYNC else 0.0)

    async def close(self) -> None:
        """Commit everything still dirty, then close the store."""
        self._closed = True  # from here on commits run only from this method
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._committing is not None:  # the worker's commit: wait for it, whatever its end
            await asyncio.wait([self._committing])
        before = self.failures
        self._commit_now()
        if self.failures > before:
            log.error("closing with %d keys not durable", len(self._dirty))
        self._executor.shutdown(wait=True)
        self.store.close()


def barrier_failure(barrier: asyncio.Future[Any] | None) -> str | None:
    """Why the commit behind a barrier failed, or None when it succeeded (or none was due).

    The transports use it to turn the replies they held into errors.
    """
    if barrier is None:
        return None
    if barrier.cancelled():
        return "commit cancelled"
    exc = barrier.exception()
    return None if exc is None else str(exc)


def _failure_of(done: asyncio.Future[Any]) -> str | None:
    if done.cancelled():
        return "commit cancelled"
    exc = done.exception()
    return None if exc is None else _describe(exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
