"""Group commit: the keys a loop turn changed reach disk in one synced batch.

Making a write durable costs a sync of the store's commit log (see
`replica.storage`), and a sync costs about as much for one key as for a few
hundred, so committing every write on its own would cap a node at a few
thousand writes a second.  Instead the node applies writes in memory, notes
which keys changed, and commits them together: the first change of a loop
turn schedules a commit, a worker thread runs it (the commit waits on the disk
without holding the interpreter), and whatever changes while it runs goes into
the next one.  States are encoded when their commit starts, so a key written
ten times between two commits is stored once.

Encoding happens on the event loop, not in the worker.  It holds the
interpreter wherever it runs, so the worker gains no parallelism from it, and
a worker that needs the interpreter has to wait for the event loop to let go
of it: each such wait lengthened the commit, and every reply behind it.  The
worker only hands the encoded batch to the store, whose sync releases the
interpreter.  One commit is in flight at a time: letting a second one queue
behind it made smaller commits and more hand-offs between the threads, and
was no faster.

In "sync" mode a transport asks `barrier()` after handling a chunk of input
and sends that chunk's replies only when the barrier resolves: nothing is
acknowledged, to a client or to a peer's merge, before it is on disk.  In
"async" mode replies go out at once and commits run every
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
from typing import Any

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
        self._durable = 0  # how many of them the last successful commit covered
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._committing: asyncio.Future[Any] | None = None
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
        self._schedule(self.flush_interval if self.mode == ASYNC else 0.0)

    def _schedule(self, delay: float) -> None:
        if self._closed:
            return
        if self._scheduled is not None or self._committing is not None:
            return  # a commit is on its way, and the one after it takes what is dirty
        if delay:
            self._scheduled = self.loop.call_later(delay, self._start_commit)
        else:
            self._scheduled = self.loop.call_soon(self._start_commit)

    def barrier(self) -> asyncio.Future[None] | None:
        """None when every change so far is durable; else a future resolved once it is.

        The future raises `NotDurable` when the commit carrying those changes fails.
        """
        target = self._changes
        if self._durable >= target:
            return None
        if self._waiters and self._waiters[-1][0] == target:
            return self._waiters[-1][1]
        future: asyncio.Future[None] = self.loop.create_future()
        self._waiters.append((target, future))
        return future

    # -- commits -------------------------------------------------------------------------

    def _start_commit(self) -> None:
        self._scheduled = None
        if self._committing is not None or not self._dirty:
            return
        refs = list(self._dirty)
        self._dirty = {}
        upto = self._changes
        commit: asyncio.Future[Any]
        try:
            records, removed = self._encode(refs)
        except Exception as exc:  # it fails its commit, as the disk would, not the loop
            commit = self.loop.create_future()
            commit.set_exception(exc)
        else:
            commit = self.loop.run_in_executor(self._executor, self._write, records, removed)
        self._committing = commit
        commit.add_done_callback(lambda done: self._committed(refs, upto, done))

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
        """In the worker thread: one batch to the store, which waits on the disk."""
        if records:
            self.store.store_batch(records)
        if removed:
            self.store.remove(removed)

    def _committed(self, refs: list[KeyRef], upto: int, done: asyncio.Future[Any]) -> None:
        self._committing = None
        error = _failure_of(done)
        if error is None:
            self._durable = upto
            self.commits += 1
            self.keys_committed += len(refs)
            while self._waiters and self._waiters[0][0] <= upto:
                _, future = self._waiters.popleft()
                if not future.done():
                    future.set_result(None)
            if self._dirty:
                self._schedule(self.flush_interval if self.mode == ASYNC else 0.0)
            return
        self.failures += 1
        self.last_error = error
        log.error("commit of %d keys failed: %s", len(refs), error)
        for ref in refs:  # still in memory, still to be stored
            self._dirty.setdefault(ref, None)
        while self._waiters and self._waiters[0][0] <= upto:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(NotDurable(error))
                future.exception()  # its holders read it; a holder that went away need not
        self._schedule(RETRY_AFTER_FAILURE_S)

    async def close(self) -> None:
        """Commit everything still dirty, then close the store."""
        self._closed = True  # from here on commits run only from this loop
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        while self._committing is not None or self._dirty:
            if self._committing is None:
                before = self.failures
                self._start_commit()
            else:
                before = self.failures - 1  # someone else's commit: wait for it, whatever its end
            assert self._committing is not None
            await asyncio.wait([self._committing])
            if self.failures > before:
                log.error("closing with %d keys not durable", len(self._dirty))
                break
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
    if exc is None:
        return None
    return f"{type(exc).__name__}: {exc}"
