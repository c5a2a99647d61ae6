"""`Pending`: a result that arrives later, whose callbacks run at once when it does.

Unlike an `asyncio.Future`, whose callbacks wait for the next turn of the
event loop, a `Pending` calls them inside `set_result`, in the order they
were added: a reply deferred through several steps (the quorum, the reply's
numbering, its encoding) reaches its connection in the same turn as the
acknowledgement that completed it.  A callback that raises is logged and the
others still run.  Not thread-safe: the event loop's thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("replica.replication.pending")

T = TypeVar("T")
U = TypeVar("U")


class Pending(Generic[T]):
    __slots__ = ("_callbacks", "_done", "_error", "_result")

    def __init__(self) -> None:
        self._done = False
        self._result: T | None = None
        self._error: Exception | None = None
        self._callbacks: list[Callable[[Pending[T]], None]] = []

    def done(self) -> bool:
        return self._done

    def result(self) -> T:
        """The result; raises what `set_exception` was given, or RuntimeError if not done."""
        if not self._done:
            raise RuntimeError("the result has not arrived")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]  # None is a valid T too

    def exception(self) -> Exception | None:
        return self._error

    def set_result(self, value: T) -> None:
        self._finish(value, None)

    def set_exception(self, error: Exception) -> None:
        self._finish(None, error)

    def _finish(self, value: T | None, error: Exception | None) -> None:
        if self._done:
            raise RuntimeError("the result has already arrived")
        self._done, self._result, self._error = True, value, error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            _call(callback, self)

    def add_done_callback(self, callback: Callable[[Pending[T]], None]) -> None:
        """Call `callback(self)` once the result arrives; at once if it has."""
        if self._done:
            _call(callback, self)
        else:
            self._callbacks.append(callback)

    def then(self, transform: Callable[[T], U]) -> Pending[U]:
        """`transform` of the result, once it arrives; an error in it is logged and carried."""
        out: Pending[U] = Pending()

        def done(source: Pending[T]) -> None:
            try:
                out.set_result(transform(source.result()))
            except Exception as exc:
                if source.exception() is None:
                    log.exception("finishing a pending result failed")
                out.set_exception(exc)

        self.add_done_callback(done)
        return out


def _call(callback: Callable[[Pending[T]], None], pending: Pending[T]) -> None:
    try:
        callback(pending)
    except Exception:
        log.exception("a callback of a pending result failed")
