"""Pipelined load: C connections each keeping P pre-encoded requests in flight.

The client runs in the benchmark's own process, on the same CPUs as the
server, so it is kept cheap: lines come ready-encoded, replies are matched to
their send times in order, and JSON is parsed only for a chunk that may hold
an error reply.  Each run also reads the CPU the client, the server and the
rest of the machine used, since all three share the cores.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from replica.testing.ports import LOOPBACK

from .machine import machine_busy_seconds, process_cpu_seconds
from .report import BenchError, Body
from .session import NodeHandle
from .stats import percentile
from .workload import cycle_from

LOAD_DRAIN_TIMEOUT = 30.0  # for the replies still in flight when a timed run ends
ERROR_MARK = b'"error"'  # in every error reply; anything else that contains it is parsed


class LoadConnection(asyncio.Protocol):
    """One client connection keeping `window` requests in flight: one new line per reply.

    A node answers each connection in order, so the reply to the oldest
    request in flight is the next one read.
    """

    def __init__(self, source: Iterator[bytes], window: int, name: str) -> None:
        self.source = source
        self.window = window
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.sent_at: collections.deque[float] = collections.deque()
        self.latencies: list[float] = []  # seconds, of the replies received while counting
        self.counted = 0
        self.counting = False
        self.sending = True
        self.errors = 0
        self.first_error: Body | None = None
        self._buffer = b""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def start(self) -> None:
        self._send(self.window)

    def stop(self) -> None:
        """Send nothing more; `done` resolves once every request sent has its reply."""
        self.sending = False
        self._maybe_done()

    def _send(self, count: int) -> None:
        if self.sending:
            lines = list(itertools.islice(self.source, count))
            if len(lines) < count:
                self.sending = False  # the source ran dry: a load phase, not a timed run
            if lines:
                assert self.transport is not None
                self.sent_at.extend(itertools.repeat(time.perf_counter(), len(lines)))
                self.transport.write(b"".join(lines))
        self._maybe_done()

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        *complete, self._buffer = (self._buffer + data).split(b"\n")
        count = len(complete)
        if not count:
            return
        if ERROR_MARK in data or ERROR_MARK in complete[0]:
            self._check_errors(complete)
        sent_at = self.sent_at
        if len(sent_at) < count:
            self._fail(BenchError(f"{self.name} sent more replies than it got requests"))
            return
        if self.counting:
            self.counted += count
            self.latencies.extend([now - sent_at.popleft() for _ in range(count)])
        else:
            for _ in range(count):
                sent_at.popleft()
        self._send(count)

    def _check_errors(self, lines: list[bytes]) -> None:
        for line in lines:
            if ERROR_MARK in line:
                try:
                    reply = orjson.loads(line)
                except orjson.JSONDecodeError:
                    reply = {"type": "error", "text": f"not JSON: {line[:200]!r}"}
                if isinstance(reply, dict) and reply.get("type") == "error":
                    self.errors += 1
                    if self.first_error is None:
                        self.first_error = reply

    def _maybe_done(self) -> None:
        if not self.sending and not self.sent_at and not self.done.done():
            self.done.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(
                BenchError(
                    f"{self.name} closed a client connection with {len(self.sent_at)} "
                    f"requests unanswered ({exc or 'EOF'})"
                )
            )


@dataclass
class LoadResult:
    seconds: float
    replies: int  # counted: received while the clock ran
    latencies: list[float]  # sorted, seconds
    errors: int
    first_error: Body | None
    client_cpu: float  # this process's CPU seconds over the run, per second of it
    node_cpu: float | None  # the server's, the same way (Linux /proc only)
    other_cpu: float | None = None  # the machine's busy CPU outside client and server

    @property
    def ops_per_s(self) -> float:
        return self.replies / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return 1000 * percentile(self.latencies, q)

    def figures(self) -> dict[str, Any]:
        return {
            "ops_per_s": self.ops_per_s,
            "replies": self.replies,
            "seconds": self.seconds,
            "p50_ms": self.percentile_ms(0.5),
            "p99_ms": self.percentile_ms(0.99),
            "p999_ms": self.percentile_ms(0.999),
            "errors": self.errors,
            "first_error": self.first_error,
            "client_cpu_cores": self.client_cpu,
            "node_cpu_cores": self.node_cpu,
            "other_cpu_cores": self.other_cpu,
        }

    @classmethod
    def pooled(cls, results: Sequence[LoadResult]) -> LoadResult:
        """Runs one after the other as one: all their replies over all their seconds."""
        return cls.combined(results, sum(r.seconds for r in results))

    @classmethod
    def combined(cls, results: Sequence[LoadResult], seconds: float) -> LoadResult:
        """Parts of a load taken as one over `seconds`: replies, latencies and errors summed.

        CPU figures are averaged, each part weighted by its own seconds.
        """
        first_errors = [r.first_error for r in results if r.first_error is not None]
        weights = sum(r.seconds for r in results) or 1.0

        def cores(of: Callable[[LoadResult], float | None]) -> float | None:
            spent = [(of(r), r.seconds) for r in results]
            if any(value is None for value, _ in spent):
                return None
            return sum(value * t for value, t in spent if value is not None) / weights

        return cls(
            seconds=seconds,
            replies=sum(r.replies for r in results),
            latencies=sorted(itertools.chain.from_iterable(r.latencies for r in results)),
            errors=sum(r.errors for r in results),
            first_error=first_errors[0] if first_errors else None,
            client_cpu=sum(r.client_cpu * r.seconds for r in results) / weights,
            node_cpu=cores(lambda r: r.node_cpu),
            other_cpu=cores(lambda r: r.other_cpu),
        )


def error_summary(runs: Sequence[tuple[str, LoadResult]]) -> str:
    """What went wrong in the named runs that had error replies; "" when none had."""
    return "; ".join(
        f"{name}: {r.errors} error replies, the first {r.first_error}"
        for name, r in runs
        if r.errors
    )


async def drive(
    node: NodeHandle, sources: Sequence[Iterator[bytes]], window: int, seconds: float | None
) -> LoadResult:
    """One LoadConnection per source against `node`, all at once.

    With `seconds` the clock runs that long and the replies still in flight
    then are drained uncounted; without, every source is sent to its end and
    every reply counts.
    """
    loop = asyncio.get_running_loop()
    conns: list[LoadConnection] = []
    try:
        for i, source in enumerate(sources):
            name = f"{node.id} (load connection {i})"
            _, conn = await loop.create_connection(
                functools.partial(LoadConnection, source, window, name),
                LOOPBACK,
                node.port,
                ssl=node.tls,
                server_hostname=None if node.tls is None else node.id,
            )
            conns.append(conn)
        pid = node.process.pid if node.process is not None else None
        node_cpu_before = process_cpu_seconds(pid) if pid else None
        busy_before = machine_busy_seconds()
        cpu_before = time.process_time()
        started = time.perf_counter()
        for conn in conns:
            conn.counting = True
            conn.start()
        if seconds is None:
            await asyncio.gather(*(conn.done for conn in conns))
        else:
            await asyncio.wait([conn.done for conn in conns], timeout=seconds)
            for conn in conns:
                conn.counting = False
                if conn.done.done():
                    conn.done.result()  # a connection that failed ends the run
        elapsed = time.perf_counter() - started
        client_cpu = (time.process_time() - cpu_before) / elapsed
        node_cpu_after = process_cpu_seconds(pid) if pid else None
        busy_after = machine_busy_seconds()
        for conn in conns:
            conn.stop()
        async with asyncio.timeout(LOAD_DRAIN_TIMEOUT):
            await asyncio.gather(*(conn.done for conn in conns))
    finally:
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
    node_cpu = other_cpu = None
    if node_cpu_before is not None and node_cpu_after is not None:
        node_cpu = (node_cpu_after - node_cpu_before) / elapsed
    if busy_before is not None and busy_after is not None and node_cpu is not None:
        other_cpu = max(0.0, (busy_after - busy_before) / elapsed - client_cpu - node_cpu)
    # the connections ran side by side: each is a part of one run of `elapsed` seconds
    parts = [
        LoadResult(
            elapsed,
            c.counted,
            c.latencies,
            c.errors,
            c.first_error,
            client_cpu,
            node_cpu,
            other_cpu,
        )
        for c in conns
    ]
    return LoadResult.combined(parts, elapsed)


async def timed_load(
    target: NodeHandle, pool: Sequence[bytes], connections: int, depth: int, seconds: float
) -> LoadResult:
    """The pool's requests against `target` for `seconds`, `depth` in flight per connection.

    Each connection cycles through the pool from its own offset, the same
    offsets on every run, so every server measured answers the same requests.
    """
    step = len(pool) // connections
    sources = [cycle_from(pool, i * step) for i in range(connections)]
    return await drive(target, sources, depth, seconds)
