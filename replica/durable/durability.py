"""Group commit: the keys a loop turn changed reach disk in one synced batch.

Making a write durable costs a sync of the store's commit log (see
`replica.durable.lmdb_store`), and a sync costs about as much for one key as for a few
hundred, so committing every write on its own would cap a node at a few
thousand writes a second.  Instead the node applies writes in memory, notes
which keys changed (with the state each change left, while it is in the
CPU's caches), and commits them together: the first change of a loop turn
schedules a commit, which takes every key changed so far, encodes their
latest states (on the loop: a key written ten times between two commits is
stored once) and hands them to the store.  The store's log writer is a process of
its own, so the loop goes on serving while the disk syncs, and the next
commit need not wait for this one: up to `MAX_IN_FLIGHT` are on their way at
once, and the writer appends whatever has arrived with one sync.  Results
come back in order.

In "sync" mode a transport asks `barrier()` after handling a chunk of input
and, when it gets a future, holds that chunk's replies until the future is
resolved, registering with `after_commit` to be called right after the
commit: nothing is acknowledged, to a client or to a peer's merge, before it
is on disk.  In "async" mode replies go out at once and commits run every
`flush_interval_ms`, so a crash can lose that window of acknowledged writes
(Redis's `appendfsync everysec` makes the same trade).

A barrier not resolved within `commit_timeout_ms` (a stuck disk) fails with
"disk stalled", so the replies it held become error 13, which means unknown:
the changes stay in memory and their commit may still succeed later.  Only
keys with a change still on its way to disk are unsafe to show or to send a
peer (`settled` tells them apart), so reads of other keys need no barrier.

A commit that fails (a full disk, or a store whose checkpoints fail) fails
every barrier waiting on it, so their replies become errors; the keys stay
dirty and are retried.  Commits started after it fail with it, whatever the
store answers them: a barrier promises that every change before it is
durable, and the failed commit's changes are not.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import Any, cast

from replica.durable.records import encode_commit
from replica.durable.store import KeyRef, Store
from replica.keyspaces import Keyspaces

log = logging.getLogger("replica.durable.durability")

SYNC, ASYNC = "sync", "async"
MODES = (SYNC, ASYNC)
RETRY_AFTER_FAILURE_S = 1.0
MAX_IN_FLIGHT = 4
DEFAULT_COMMIT_TIMEOUT_MS = 5_000
DEFAULT_FLUSH_INTERVAL_MS = 10
STALLED = "disk stalled"


class NotDurable(Exception):
    """A commit failed: the writes it carried must not be acknowledged."""


class _Commit:
    """A commit on its way: its keys, the changes it covers, and its result once known."""

    __slots__ = ("changes", "done", "failure", "started", "upto")

    def __init__(self, changes: dict[KeyRef, Any], upto: int, started: float) -> None:
        self.changes = changes
        self.upto = upto
        self.started = started
        self.done = False
        self.failure: str | None = None


class Durability:
    """Commits the keyspaces' changes to `store` in batches; see the module docstring."""

    def __init__(
        self,
        keyspaces: Keyspaces,
        store: Store,
        *,
        mode: str = SYNC,
        flush_interval_ms: int = DEFAULT_FLUSH_INTERVAL_MS,
        commit_timeout_ms: int = DEFAULT_COMMIT_TIMEOUT_MS,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"durability mode must be one of {MODES}, not {mode!r}")
        if commit_timeout_ms <= 0:
            raise ValueError(f"commit_timeout_ms must be greater than 0, not {commit_timeout_ms}")
        self.keyspaces = keyspaces
        self._states = keyspaces.states  # {type name: {key: state}}, never replaced
        self.store = store
        self.mode = mode
        self.flush_interval = flush_interval_ms / 1000
        self.commit_timeout = commit_timeout_ms / 1000
        self.loop = loop or asyncio.get_running_loop()
        self._dirty: dict[KeyRef, Any] = {}  # each changed key's state at its latest change
        self._changes = 0  # changes seen so far
        self._started = 0  # changes the latest commit to start carries
        self._durable = 0  # changes the last successful commit covered
        # [target, future, deadline]: futures in order of target, and so of deadline
        self._waiters: collections.deque[list[Any]] = collections.deque()
        self._expiry: asyncio.TimerHandle | None = None  # at the oldest waiter's deadline
        self._after_commit: dict[Callable[[], None], None] = {}
        self._in_flight: collections.deque[_Commit] = collections.deque()
        self._drained: asyncio.Future[None] | None = None  # close waits on it
        self._scheduled: asyncio.Handle | None = None
        self.commits = 0
        self.keys_committed = 0
        self.failures = 0
        self.timeouts = 0  # barriers failed because the disk took longer than the timeout
        self.unsettled_reads = 0  # reads that showed a change still on its way to disk
        self.last_error: str | None = None
        self._failing = False  # the latest commit to end failed
        self._closed = False
        store.begin_writes()
        keyspaces.listeners.append(self._changed)

    @property
    def holds_replies(self) -> bool:
        return self.mode == SYNC

    @property
    def in_flight(self) -> int:
        """Commits handed to the store whose results have not come back."""
        return len(self._in_flight)

    @property
    def changes(self) -> int:
        """Changes seen so far: a transport compares it to tell whether a request changed state."""
        return self._changes

    def all_settled(self) -> bool:
        """True when no change at all is on its way to disk (or in "async" mode)."""
        return self.mode == ASYNC or not (self._dirty or self._in_flight)

    def note_read(self, keyspace: str, key: str) -> None:
        """A request showed this key's state: count it when a change to it is not yet durable.

        A transport compares `unsettled_reads` before and after a request, as it
        does `changes`: such a reply waits for the commit, so no client sees a
        value a crash could still lose.
        """
        if (self._dirty or self._in_flight) and not self.settled(keyspace, key):
            self.unsettled_reads += 1

    def status(self) -> dict[str, Any]:
        """The counters `status` shows, the disk's state, and the store's own (`Store.status`).

        The disk is "ok", "stalled" (the oldest commit on its way has taken
        longer than the timeout) or "failing" (the latest commit to end failed).
        """
        oldest = self.loop.time() - self._in_flight[0].started if self._in_flight else 0.0
        disk = "failing" if self._failing else "ok"
        if oldest >= self.commit_timeout:
            disk = "stalled"
        return {
            "mode": self.mode,
            "disk": disk,
            "oldest_commit_ms": round(oldest * 1000),
            "commit_timeout_ms": round(self.commit_timeout * 1000),
            "commits": self.commits,
            "keys_committed": self.keys_committed,
            "commits_in_flight": len(self._in_flight),
            "failures": self.failures,
            "timeouts": self.timeouts,
            "last_error": self.last_error,
            **self.store.status(),
        }

    # -- changes -------------------------------------------------------------------------

    def _changed(self, keyspace: str, key: str, local: bool) -> None:
        # The state is taken now, while it is in the CPU's caches; states are
        # immutable values, so a later change replaces it here, never mutates it.
        self._dirty[(keyspace, key)] = self._states[keyspace].get(key)
        self._changes += 1
        if self._scheduled is None:
            self._schedule(self.flush_interval if self.mode == ASYNC else 0.0)

    def _schedule(self, delay: float) -> None:
        if self._closed or self._scheduled is not None:
            return
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
        deadline = self.loop.time() + self.commit_timeout
        self._waiters.append([target, future, deadline])
        if self._expiry is None:
            self._expiry = self.loop.call_at(deadline, self._expire)
        return future

    def settled(self, keyspace: str, key: str) -> bool:
        """True when no change to the key is still on its way to disk.

        Always True in "async" mode, which acknowledges before durability by
        contract.  At most `MAX_IN_FLIGHT` dict lookups: it is asked per key.
        """
        if self.mode == ASYNC:
            return True
        ref = (keyspace, key)
        if ref in self._dirty:
            return False
        return not any(ref in commit.changes for commit in self._in_flight)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback` once, right after the next commit ends, whatever its end.

        Transports release held replies from here rather than from a
        barrier's done callback, which would wait for another loop turn.
        """
        self._after_commit[callback] = None

    def _expire(self) -> None:
        """Fail the barriers past their deadline: the disk did not answer in time.

        Their commits stay on their way and their changes in memory; what
        comes back later still counts, for `settled` and later barriers.
        """
        self._expiry = None
        now = self.loop.time()
        expired = 0
        while self._waiters and self._waiters[0][2] <= now:
            future = self._waiters.popleft()[1]
            if not future.done():
                future.set_exception(NotDurable(STALLED))
                future.exception()
                expired += 1
        if expired:
            self.timeouts += expired
            age = now - self._in_flight[0].started if self._in_flight else 0.0
            log.error(
                "disk stalled: %d commits on their way, the oldest for %.1f s; "
                "writes waiting over %d ms answered with error 13",
                len(self._in_flight),
                age,
                round(self.commit_timeout * 1000),
            )
            self._run_after_commit()
        if self._waiters and not self._closed:
            self._expiry = self.loop.call_at(self._waiters[0][2], self._expire)

    def _run_after_commit(self) -> None:
        callbacks, self._after_commit = self._after_commit, {}
        for callback in callbacks:
            callback()

    # -- commits -------------------------------------------------------------------------

    def _start_commit(self) -> None:
        self._scheduled = None
        if self._dirty and len(self._in_flight) < MAX_IN_FLIGHT:
            self._begin_commit()

    def _begin_commit(self) -> None:
        """Take every dirty key into a commit and hand its states to the store."""
        changes, self._dirty = self._dirty, {}
        self._started = upto = self._changes
        commit = _Commit(changes, upto, self.loop.time())
        self._in_flight.append(commit)
        try:
            record = encode_commit(changes)
            self.store.submit(record, lambda failure: self._finished(commit, failure))
        except Exception as exc:  # it fails its commit, as the disk would, not the loop
            self.loop.call_soon(self._finished, commit, _describe(exc))

    def _finished(self, commit: _Commit, failure: str | None) -> None:
        """Take the results that are in, oldest first, then release whoever waits on them."""
        if commit.done:
            return
        commit.done, commit.failure = True, commit.failure or failure
        failed = False
        while self._in_flight and self._in_flight[0].done:
            oldest = self._in_flight.popleft()
            if oldest.failure is None:
                self._succeeded(oldest)
            else:
                self._failed(oldest)
                failed = True
        self._run_after_commit()
        if not self._in_flight and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if failed:
            if self._scheduled is not None:
                self._scheduled.cancel()
                self._scheduled = None
            self._schedule(RETRY_AFTER_FAILURE_S)
        elif self._dirty:
            self._schedule(self.flush_interval if self.mode == ASYNC else 0.0)

    def _succeeded(self, commit: _Commit) -> None:
        self._durable = commit.upto
        self._failing = False
        self.commits += 1
        self.keys_committed += len(commit.changes)
        while self._waiters and self._waiters[0][0] <= commit.upto:
            future = self._waiters.popleft()[1]
            if not future.done():
                future.set_result(None)

    def _failed(self, commit: _Commit) -> None:
        error = commit.failure or "an earlier commit failed"
        self.failures += 1
        self._failing = True
        self.last_error = error
        log.error("commit of %d keys failed: %s", len(commit.changes), error)
        for later in self._in_flight:  # they cannot make this commit's changes durable
            later.failure = later.failure or f"an earlier commit failed: {error}"
        for keyspace, key in commit.changes:  # still in memory, still to be stored
            self._dirty.setdefault((keyspace, key), self._states[keyspace].get(key))
        while self._waiters and self._waiters[0][0] <= commit.upto:
            future = self._waiters.popleft()[1]
            if not future.done():
                future.set_exception(NotDurable(error))
                future.exception()  # its holders read it; a holder that went away need not

    async def close(self) -> None:
        """Commit everything still dirty, then close the store, handing it the actor's dot floor."""
        self._closed = True  # from here on commits start only from this method
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        await self._drain()
        if self._dirty:
            before = self.failures
            self._begin_commit()
            await self._drain()
            if self.failures > before:
                log.error("closing with %d keys not durable", len(self._dirty))
        # Not clean: the next start takes a new actor, and needs no floor.
        self.store.close(clean=not self._dirty, dot_floor=self.keyspaces.dot_floor)

    async def _drain(self) -> None:
        """Until every commit on its way has its result."""
        if self._in_flight:
            self._drained = self.loop.create_future()
            await self._drained


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


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
