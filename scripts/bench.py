#!/usr/bin/env python3
"""The project's benchmark: real node processes on loopback, measured from outside.

    .venv/bin/python scripts/bench.py converge [--keys 10000] [--nodes 3]
        [--gossip-interval-ms 200] [--keyspace mv] [--value-bytes 16] [--json]
        [--memory] [--connections 16] [--window 64] [--timeout 120] [--profile DIR]
    .venv/bin/python scripts/bench.py throughput [--connections 16] [--in-flight 16]
        [--seconds 5] [--mix mv_write[:W],mv_read[:W],...] [--durable|--memory|--both]
        [--floor] [--rounds R] [--depths 1,4,16,64] [--chart FILE.png]
        [--keys 100000] [--value-bytes 16] [--json]
    .venv/bin/python scripts/bench.py restart [--keys 1000000] [--value-bytes 16]
        [--connections 8] [--window 64] [--sample 1000] [--json]
    .venv/bin/python scripts/bench.py memory [--keys 1000000] [--value-bytes 16]
        [--connections 8] [--window 64] [--sample 1000] [--memory] [--json]
    .venv/bin/python scripts/bench.py resp [--requests 200000] [--clients 16]
        [--pipeline 16] [--rounds 2] [--memory] [--json]

`converge` cuts n1 off from the other nodes, writes the same keys once on each
side (so every key ends with two siblings), heals the partition, and measures
how long the nodes take to agree again and how many gossip bytes that costs
per key, against the targets: 10,000 divergent keys converge within 2 s of the
heal, and gossip costs at most twice each key's serialized state.

`throughput` starts one node and keeps C connections x P pre-encoded requests
of an op mix (mv_write, mv_read, kv_put, lww_write, mvcc_put, mvcc_get, with
optional weights) in flight for D seconds, then reports ops/s, p50/p99/p999
latency and error replies (any error fails the run).  `--both` runs a durable
node and an in-memory one side by side and alternates their timed rounds
(durable, memory, durable, memory, ... at each depth; R pairs, `--rounds`,
default 3), each node idle while the other is measured, so that the machine's
drift from minute to minute skews both alike; it reports durable / in memory
of the medians, of the bests and per round (round i against round i), against
the target: durable mv_write at least 0.8x in memory.  The client runs in the
benchmark's own process and takes CPU from the same machine as the node; the
report shows both shares.
`--floor` also starts the floor, a bare uvloop + orjson server of its own
(scripts/bench_floor.py: parse each line, build a `TYPE_ok` reply, one write
per read), and runs the same load (the same pre-encoded requests, connections,
depth and seconds) against it and against the node alternately, floor first,
R rounds each (`--rounds`, default 2); it reports every round, the best and
the median of each, and node / floor (of the medians), against the targets for
a durable node: `mv_write` at least 0.40x the floor, `mv_read` at least 0.50x,
p99 at most 10 ms and no error replies.  `--depths 1,4,16,64` sweeps the
requests in flight per connection, measuring everything above at each depth
(targets are judged at the `--in-flight` depth only, the load they are set
for), and `--chart FILE.png` draws ops/s and p99 against the depth (it needs
matplotlib: the `plot` extra, `.venv/bin/pip install -e '.[plot]'`).

`restart` writes N mv keys to a durable node, kills it with SIGKILL, starts it
again and times the way from the process start to a correct mv_read, against
the target: under 10 s for 1,000,000 keys; then a random sample of keys must
read back exactly what was written, and the node must hold all N.

`memory` starts one node (durable unless --memory), reads its resident memory
(VmRSS of /proc/PID/status) once it is idle, writes N mv keys with small
values, waits until it is idle again and reads VmRSS again, against the
target: at most 400 bytes of resident memory per key (VmRSS / N) at 1,000,000
keys.  It reports the growth per key too, and the write rate; a random sample
of keys must read back exactly what was written, and the node must hold all N.

`resp` starts one node with a `resp_port` (durable unless --memory) and a
`redis-server --appendonly yes --appendfsync always` in the temporary
directory, and runs `redis-benchmark -P 16 -r 100000` with
`MVREG SET r<R>:key:__rand_int__ v` against the node and
`SET r<R>:key:__rand_int__ v` against redis-server, alternately (R the
round), against the target: the node at least 0.5x redis-server's
requests/s.  After each node run a sample of the round's keys must read back
`[v]` with MVREG GET, and the node must hold about as many keys as the rounds
so far reach.  Each round has keys of its own because redis-benchmark seeds
its key generator with `time(NULL) ^ getpid()`: two runs a few seconds and a
few pids apart can draw the very same keys.  It needs redis-benchmark and
redis-server on PATH (Debian packages redis-tools and redis-server); without
them it exits 3.

Every subcommand runs in a `Session`: a temporary directory, N `replica serve`
processes whose peer links all pass through TCP proxies (scripts/bench_proxy.py,
a process of its own; none for a single node) so that links can be cut and
healed without touching the nodes, and clients that keep many requests in
flight.  The nodes are judged only by what they answer (`status`, reads) and by
what crosses the proxies, so the benchmark measures the server as deployed.
Everything is stopped and removed on exit, on error, on Ctrl-C and when the
global deadline passes.

A new subcommand is one `_add_<name>` function declaring its options (the
common ones come from `_common_options`) and one `run_<name>(args, session)`
coroutine returning a `Report`.

Exit status: 0 every target met, 1 a target missed, 3 the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import hashlib
import itertools
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

try:
    import hiredis
    import orjson
    import uvloop
except ImportError as exc:
    print(
        f"bench.py needs replica's environment: run it with .venv/bin/python ({exc})",
        file=sys.stderr,
    )
    sys.exit(3)  # EXIT_FAILED: the run could not even start

LOOPBACK = "127.0.0.1"
PROXY_SCRIPT = Path(__file__).resolve().with_name("bench_proxy.py")
FLOOR_SCRIPT = Path(__file__).resolve().with_name("bench_floor.py")
POLL_SECONDS = 0.02  # status polling period: the resolution of every measured time
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
QUIESCE_TIMEOUT = 10.0
READ_CONNECTIONS = 4  # per node, for verification reads
READ_WINDOW = 128
SAMPLE_KEYS = 500
ENTRY_FRAMES = tuple(f"(replica/{m}.py)" for m in ("__main__", "cli", "tcp", "node"))
LINE_NUMBER = re.compile(r":\d+\)$")  # py-spy frames end "(file.py:123)"
READ_LIMIT = 64 << 20

EXIT_PASS, EXIT_MISS, EXIT_FAILED = 0, 1, 3

Body = dict[str, Any]


class BenchError(Exception):
    """The run could not measure what it set out to: a node failed, a reply was wrong."""


# -- the machine -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
    }


# -- child processes ---------------------------------------------------------------------------


class Children:
    """Every process the benchmark started, so that all of them stop whatever happens.

    Each child leads its own process group (a terminal's Ctrl-C reaches only the
    benchmark), so stopping signals the group: SIGTERM, then SIGKILL.
    """

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(
        self, argv: Sequence[str], *, cwd: Path, log: Path, control: bool = False
    ) -> subprocess.Popen[bytes]:
        pipe = subprocess.PIPE if control else subprocess.DEVNULL
        with log.open("ab") as log_file:
            process = subprocess.Popen(
                argv,
                cwd=cwd,
                stdin=pipe,
                stdout=subprocess.PIPE if control else log_file,
                stderr=log_file,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        running = [p for p in self.processes if p.poll() is None]
        for process in running:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        for process in self.processes:
            if process.stdout is not None:
                process.stdout.close()


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago (all held at once)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


# -- the proxies ---------------------------------------------------------------------------------


class ProxyControl:
    """The proxy process: cut and heal links, read its per-link byte tallies.

    Commands are rare and tiny, so a blocking pipe read in a worker thread is
    simpler than an asyncio pipe transport and costs well under a millisecond.
    """

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process
        self._lock = asyncio.Lock()

    async def command(self, cmd: str, links: Iterable[str] | None = None) -> Body:
        message: Body = {"cmd": cmd}
        if links is not None:
            message["links"] = list(links)
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(orjson.dumps(message) + b"\n")
            self.process.stdin.flush()
            line = await asyncio.to_thread(self.process.stdout.readline)
        if not line:
            raise BenchError(f"the proxy process exited (code {self.process.poll()})")
        answer = orjson.loads(line)
        if not answer.get("ok"):
            raise BenchError(f"proxy refused {cmd}: {answer.get('error')}")
        return answer

    async def cut(self, links: Iterable[str]) -> None:
        await self.command("cut", links)

    async def heal(self, links: Iterable[str]) -> None:
        await self.command("heal", links)

    async def reset(self) -> None:
        await self.command("reset")

    async def stats(self) -> dict[str, LinkStats]:
        return (await self.command("stats"))["stats"]


LinkStats = dict[str, Any]
"""One link's tallies: {"sent"|"replies": {type: [lines, bytes, first, last]}, "accepted": [t]}."""


def link_name(src: str, dest: str) -> str:
    """The directed peer link on which `src` sends to `dest` (and reads its answers)."""
    return f"{src}>{dest}"


# -- clients -------------------------------------------------------------------------------------


class Connection:
    """One client connection that keeps many requests in flight.

    Not for concurrent use: one coroutine at a time owns a connection, which is
    what lets `pipeline` match replies by `msg_id` range without a dispatcher.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str
    ) -> None:
        self.name = name  # the node it talks to, for error messages
        self.reader = reader
        self.writer = writer
        self._next_id = 1

    @classmethod
    async def open(cls, port: int, name: str) -> Connection:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT)
        return cls(reader, writer, name)

    async def request(self, body: Body) -> Body:
        (reply,) = await self.pipeline([body], 1)
        return reply

    async def pipeline(self, bodies: Sequence[Body], window: int) -> list[Body]:
        """Send every body with at most `window` unanswered; the replies, in request order."""
        if not bodies:
            return []
        first = self._next_id
        self._next_id += len(bodies)
        lines = [
            orjson.dumps({**body, "msg_id": first + i}) + b"\n" for i, body in enumerate(bodies)
        ]
        replies: list[Body | None] = [None] * len(lines)
        sent = min(window, len(lines))
        self.writer.write(b"".join(lines[:sent]))
        received = 0
        buffer = b""
        while received < len(lines):
            chunk = await self.reader.read(1 << 18)
            if not chunk:
                raise BenchError(f"{self.name} closed a client connection")
            *complete, buffer = (buffer + chunk).split(b"\n")
            for line in complete:
                if line:
                    reply = orjson.loads(line)
                    replies[_reply_index(reply, first, len(lines))] = reply
                    received += 1
            more = min(len(lines) - sent, len(complete))
            if more:
                self.writer.write(b"".join(lines[sent : sent + more]))
                sent += more
                await self.writer.drain()
        return [r for r in replies if r is not None]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


def _reply_index(reply: Any, first: int, count: int) -> int:
    in_reply_to = reply.get("in_reply_to") if isinstance(reply, dict) else None
    if type(in_reply_to) is not int or not first <= in_reply_to < first + count:
        raise BenchError(f"a reply that answers no request in flight: {reply!r:.200}")
    return in_reply_to - first


async def spread(
    connections: Sequence[Connection], bodies: Sequence[Body], window: int
) -> list[Body]:
    """Pipeline `bodies` over all `connections` at once; replies in request order."""
    share = -(-len(bodies) // len(connections))
    slices = [bodies[i : i + share] for i in range(0, len(bodies), share)]
    results = await asyncio.gather(
        *(conn.pipeline(part, window) for conn, part in zip(connections, slices, strict=False))
    )
    return [reply for part in results for reply in part]


# -- a running cluster ---------------------------------------------------------------------------


@dataclass
class NodeHandle:
    id: str
    port: int
    directory: Path
    resp_port: int | None = None  # its Redis-protocol port, when the session asked for one
    process: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0  # time.monotonic() just before its process was started
    control: Connection | None = None  # status polls only, never shared with pipelines
    pool: list[Connection] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / "node.log"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Session:
    """N nodes on loopback, every peer link through a proxy that can cut it."""

    def __init__(
        self,
        directory: Path,
        children: Children,
        node_count: int,
        gossip_ms: int,
        *,
        memory: bool = False,
        resp: bool = False,
        id_prefix: str = "n",
    ) -> None:
        self.directory = directory
        self.children = children
        self.gossip_ms = gossip_ms
        self.memory = memory
        self.log_level = "warning"
        # n1, n2, ...: another session in the same directory takes another prefix
        ids = [f"{id_prefix}{i}" for i in range(1, node_count + 1)]
        self.links = [link_name(a, b) for a in ids for b in ids if a != b]
        ports = free_ports(2 * len(ids) + len(self.links) if resp else len(ids) + len(self.links))
        self.nodes = {
            node_id: NodeHandle(
                node_id,
                ports[i],
                directory / node_id,
                resp_port=ports[len(ids) + len(self.links) + i] if resp else None,
            )
            for i, node_id in enumerate(ids)
        }
        self.proxy_ports = dict(
            zip(self.links, ports[len(ids) : len(ids) + len(self.links)], strict=True)
        )
        self.proxy: ProxyControl | None = None
        self.phase = "starting"
        self.latency: dict[str, tuple[float, float]] = {}  # node → (asked at, seconds)

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    # -- start and stop

    async def start(self) -> None:
        """Proxies (all cut), then nodes; heal every link once all nodes listen.

        A single node has no links, hence no proxy process either.
        """
        if self.links:
            self._start_proxy()
        for node in self.nodes.values():
            self._start_node(node)
        await asyncio.gather(*(self._wait_listening(node) for node in self.nodes.values()))
        for node in self.nodes.values():
            node.control = await Connection.open(node.port, node.id)
        if self.links:
            await self.heal(self.links)
            await self.wait_links(lambda a, b: True)

    async def stop_node(self, node_id: str, sig: int = signal.SIGTERM) -> None:
        """Close the node's clients and stop its process with `sig` (SIGKILL: a crash)."""
        node = self.nodes[node_id]
        for conn in [*node.pool, *([node.control] if node.control else [])]:
            await conn.close()
        node.pool.clear()
        node.control = None
        if node.process is not None and node.process.poll() is None:
            _signal_group(node.process, sig)
            try:
                await asyncio.to_thread(node.process.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{node_id} still running {STOP_TIMEOUT}s after {sig!r}") from None

    def start_node(self, node_id: str) -> NodeHandle:
        """Start a stopped node again, as `memory` and `log_level` now say; does not wait."""
        node = self.nodes[node_id]
        self._start_node(node)
        return node

    async def wait_ready(self, node_id: str) -> None:
        """Until the node listens; then open its status connection."""
        node = self.nodes[node_id]
        await self._wait_listening(node)
        node.control = await Connection.open(node.port, node.id)

    async def start_floor(self) -> NodeHandle:
        """The floor server (scripts/bench_floor.py) on a free port, listening; not a node."""
        (port,) = free_ports(1)
        floor = NodeHandle("floor", port, self.directory / "floor")
        floor.directory.mkdir()
        argv = [sys.executable, str(FLOOR_SCRIPT), "--port", str(port)]
        floor.spawned_at = time.monotonic()
        floor.process = self.children.spawn(argv, cwd=floor.directory, log=floor.log)
        await self._wait_listening(floor)
        return floor

    def _start_proxy(self) -> None:
        argv = [sys.executable, str(PROXY_SCRIPT)]
        for link in self.links:
            target = self.nodes[link.split(">")[1]].port
            argv += ["--link", f"{link}:{self.proxy_ports[link]}:{target}"]
        process = self.children.spawn(
            argv, cwd=self.directory, log=self.directory / "proxy.log", control=True
        )
        self.proxy = ProxyControl(process)

    def _start_node(self, node: NodeHandle) -> None:
        node.directory.mkdir(parents=True, exist_ok=True)
        config = node.directory / "cluster.toml"
        config.write_text(self._cluster_file(node.id))
        argv = [sys.executable, "-m", "replica", "serve", "--config", str(config)]
        argv += ["--node", node.id, "--log-level", self.log_level]
        if self.memory:
            argv.append("--memory")
        node.spawned_at = time.monotonic()
        node.process = self.children.spawn(argv, cwd=node.directory, log=node.log)

    def _cluster_file(self, me: str) -> str:
        """`me` at its real port; every peer at the port of the proxy on the link to it."""
        lines = ["[cluster]", f"gossip_interval_ms = {self.gossip_ms}", ""]
        for node in self.nodes.values():
            port = node.port if node.id == me else self.proxy_ports[link_name(me, node.id)]
            lines += [
                "[[nodes]]",
                f'id = "{node.id}"',
                f'host = "{LOOPBACK}"',
                f"port = {port}",
                f'data_dir = "data/{node.id}"',
                *([f"resp_port = {node.resp_port}"] if node.resp_port is not None else []),
                "",
            ]
        return "\n".join(lines)

    async def _wait_listening(self, node: NodeHandle) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_alive(node)
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, node.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{node.id} not listening after {START_TIMEOUT}s") from None
                await asyncio.sleep(0.02)
            else:
                writer.close()
                return

    def check_alive(self, *others: NodeHandle) -> None:
        """Raise if a node (or one of `others`, such as the floor) has exited."""
        for node in [*self.nodes.values(), *others]:
            if node.process is not None and node.process.poll() is not None:
                raise BenchError(f"{node.id} exited with code {node.process.returncode}")

    async def close(self) -> None:
        for node in self.nodes.values():
            for conn in [*node.pool, *([node.control] if node.control else [])]:
                await conn.close()
            node.pool.clear()
            node.control = None

    # -- asking nodes

    async def status(self) -> dict[str, Body]:
        """Every node's status, asked at once; `latency` keeps how long each node took.

        A node answers between two event-loop callbacks, so a slow answer
        means the node's loop was busy: a stall seen from outside.  (A node
        that commits synchronously also holds every reply, status included,
        until the changes it has seen so far are on disk.)
        """
        self.check_alive()

        async def ask(node: NodeHandle) -> Body:
            assert node.control is not None
            started = time.monotonic()
            reply = await node.control.request({"type": "status"})
            self.latency[node.id] = (started, time.monotonic() - started)
            if reply.get("type") != "status_ok":
                raise BenchError(f"{node.id} refused status: {reply}")
            return reply

        replies = await asyncio.gather(*(ask(node) for node in self.nodes.values()))
        return dict(zip(self.nodes, replies, strict=True))

    async def connections(self, node_id: str, count: int) -> list[Connection]:
        node = self.nodes[node_id]
        while len(node.pool) < count:
            node.pool.append(await Connection.open(node.port, node_id))
        return node.pool[:count]

    # -- links

    def links_between(self, side_a: Iterable[str], side_b: Iterable[str]) -> list[str]:
        a, b = set(side_a), set(side_b)
        return [
            link_name(x, y)
            for x in self.ids
            for y in self.ids
            if (x in a and y in b) or (x in b and y in a)
        ]

    async def cut(self, links: Iterable[str]) -> None:
        assert self.proxy is not None
        await self.proxy.cut(links)

    async def heal(self, links: Iterable[str]) -> None:
        assert self.proxy is not None
        await self.proxy.heal(links)

    async def wait_links(self, expect_up: Callable[[str, str], bool]) -> dict[str, Body]:
        """Poll until every node sees each peer link up or down as `expect_up(node, peer)` says."""
        while True:
            statuses = await self.status()
            if all(
                peer["connected"] == expect_up(node_id, peer["id"])
                for node_id, status in statuses.items()
                for peer in status["peers"]
            ):
                return statuses
            await asyncio.sleep(POLL_SECONDS)


@contextlib.asynccontextmanager
async def running(s: Session) -> AsyncIterator[Session]:
    """The session started; its clients closed at the end, its logs shown if it failed."""
    try:
        await s.start()
        yield s
    except (BenchError, TimeoutError, OSError):
        for node in s.nodes.values():
            if node.process is not None and node.process.poll() is not None:
                print(f"{node.id} exited with code {node.process.returncode}", file=sys.stderr)
            tail = node.log_tail()
            if tail:
                print(f"--- last lines of {node.id}'s log ---\n{tail}", file=sys.stderr)
        raise
    finally:
        await s.close()


# -- profiling -----------------------------------------------------------------------------------


class Profiler:
    """py-spy sampling every node from outside, for as long as the measured phase lasts.

    Sampling runs with `--nonblocking`, so the nodes are never paused, but the
    samplers still take CPU from the nodes: timings of a profiled run are not
    the benchmark's figures.
    """

    def __init__(self, directory: Path, children: Children) -> None:
        self.directory = directory
        self.children = children
        self.samplers: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, nodes: Iterable[NodeHandle]) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            raise BenchError("--profile needs py-spy (pip install py-spy into the venv)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            assert node.process is not None
            argv = [py_spy, "record", "--pid", str(node.process.pid), "--rate", "250"]
            argv += ["--nonblocking", "--format", "raw", "--output", str(self.output(node.id))]
            self.samplers[node.id] = self.children.spawn(
                argv, cwd=self.directory, log=self.directory / f"{node.id}.py-spy.log"
            )

    def output(self, node_id: str) -> Path:
        return self.directory / f"{node_id}.folded"

    async def stop(self) -> None:
        """SIGINT makes py-spy write what it sampled."""
        for sampler in self.samplers.values():
            with contextlib.suppress(ProcessLookupError):
                sampler.send_signal(signal.SIGINT)
        for sampler in self.samplers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(sampler.wait, STOP_TIMEOUT)

    def summary(self, top: int = 8) -> list[str]:
        """Per node: where the samples were (own time), and the replica calls that held them."""
        out = []
        for node_id in self.samplers:
            inclusive, own, total = _fold(self.output(node_id))
            out.append(f"  {node_id}: {total} samples, {self.output(node_id)}")
            out.append("    own time:")
            out += _shares(own, total, top)
            calls = {f: n for f, n in inclusive.items() if _below_transport(f)}
            out.append("    inclusive, below the transport:")
            out += _shares(calls, total, top + 4)
        return out


def _below_transport(frame: str) -> bool:
    """A frame of replica's own work, not one of the entry and transport frames above it all."""
    return "replica/" in frame and not frame.endswith(ENTRY_FRAMES)


def _shares(counts: dict[str, int], total: int, top: int) -> list[str]:
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [f"      {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in ranked]


def _fold(path: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """Inclusive and own sample counts per function from py-spy's folded stacks.

    Line numbers are dropped, so a function's samples are counted together
    whichever of its lines they fell on.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
            total += count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count
    return inclusive, own, total


# -- reports -------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    measured: float
    limit: float
    unit: str
    at_least: bool = False  # the limit is a floor (a ratio to reach), not a ceiling

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit


@dataclass
class Report:
    """What a subcommand measured: JSON-ready figures, text lines, targets."""

    command: str
    params: dict[str, Any]
    figures: dict[str, Any]
    lines: list[str]
    targets: list[Target]
    machine: dict[str, Any] = field(default_factory=dict)  # taken before the run started
    failure: str = ""  # set when the run measured, but what it saw makes it a failed run

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "command": self.command,
                "machine": self.machine,
                "params": self.params,
                "figures": self.figures,
                "failure": self.failure or None,
                "targets": [
                    {
                        "name": t.name,
                        "measured": t.measured,
                        "limit": t.limit,
                        "unit": t.unit,
                        "at_least": t.at_least,
                        "pass": t.passed,
                    }
                    for t in self.targets
                ],
            },
            option=orjson.OPT_INDENT_2,
        )

    def to_text(self) -> str:
        m = self.machine
        out = [
            f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['implementation']} "
            f"{m['python']}, {m['platform']}, load {m['loadavg_1m']}",
            *self.lines,
            "",
            f"{'target':<46}{'measured':>10}{'limit':>10}  result",
        ]
        for t in self.targets:
            result = "PASS" if t.passed else "MISS"
            unit = f"{t.unit}, at least" if t.at_least else t.unit
            out.append(f"{t.name:<46}{t.measured:>10.2f}{t.limit:>10.2f}  {result}  ({unit})")
        if self.failure:
            out.append(f"FAILED: {self.failure}")
        return "\n".join(out)


def row(label: str, value: str, note: str = "") -> str:
    return f"  {label:<44}{value:>10}  {note}".rstrip()


# -- converge ------------------------------------------------------------------------------------

CONVERGE_SECONDS_LIMIT = 2.0
GOSSIP_RATIO_LIMIT = 2.0


def key_name(index: int) -> str:
    return f"key{index:07d}"


def value_for(node_id: str, index: int, size: int) -> str:
    """`size` characters: who wrote it (so a stray value is recognisable), then hex noise.

    The noise is a hash of the writer and index, so the expected values can be
    recomputed, and it does not flatter any compression the way padding would.
    """
    text = f"{node_id}:{index}:"
    noise = hashlib.shake_128(text.encode()).hexdigest(max(1, size // 2 + 1))
    return (text + noise)[:size]


def expected_values(actors: Sequence[str], index: int, size: int) -> list[Body]:
    """`mv_read`'s values after the heal: each writer's one write, ordered by dot.

    `actors` are the names the writers' dots carry, as their write replies
    showed them: a node id, or a node id with its data dir's incarnation
    after a `~`.
    """
    return [
        {"value": value_for(_node_of(actor), index, size), "vclock": {actor: 1}, "dot": [actor, 1]}
        for actor in sorted(actors)
    ]


def _node_of(actor: str) -> str:
    return actor.split("~", 1)[0]


def wire_state(values: Sequence[Body]) -> list[Body]:
    """A read's siblings as `mv_merge` carries them: the past is the vclock without the dot."""
    state = []
    for v in values:
        node, counter = v["dot"]
        past = dict(v["vclock"])
        if counter <= 1:
            past.pop(node, None)
        else:
            past[node] = counter - 1
        state.append({"value": v["value"], "dot": v["dot"], "past": past})
    return state


async def write_side(s: Session, node_id: str, keys: int, args: argparse.Namespace) -> str:
    """Write every key once at `node_id` without a context; returns the actor of its dots.

    Every reply must be the key's first write: one dot, counter 1, of one
    actor that names this node.
    """
    bodies = [
        {"type": "mv_write", "key": key_name(i), "value": value_for(node_id, i, args.value_bytes)}
        for i in range(keys)
    ]
    conns = await s.connections(node_id, args.connections)
    replies = await spread(conns, bodies, args.window)
    actor = next(iter(replies[0].get("vclock") or {"?": 1}))
    if _node_of(actor) != node_id:
        raise BenchError(f"a write at {node_id} made a dot of another node: {replies[0]}")
    bad = [r for r in replies if r.get("type") != "mv_write_ok" or r.get("vclock") != {actor: 1}]
    if bad:
        raise BenchError(f"{len(bad)} of {len(replies)} writes at {node_id} went wrong: {bad[0]}")
    return actor


async def read_mismatches(
    s: Session, indices: Sequence[int], actors: Sequence[str], size: int
) -> tuple[dict[str, int], list[list[Body]]]:
    """Read `indices` on every node; keys that differ from the expected siblings, per node.

    Every node is compared with the exact expected state, which implies they
    are identical to each other.  Also returns the first node's reads.
    """
    bodies = [{"type": "mv_read", "key": key_name(i)} for i in indices]

    async def read(node_id: str) -> list[Body]:
        return await spread(await s.connections(node_id, READ_CONNECTIONS), bodies, READ_WINDOW)

    per_node = await asyncio.gather(*(read(node_id) for node_id in s.ids))
    wrong: dict[str, int] = {}
    for node_id, replies in zip(s.ids, per_node, strict=True):
        count = sum(
            1
            for i, reply in zip(indices, replies, strict=True)
            if reply.get("values") != expected_values(actors, i, size)
        )
        if count:
            wrong[node_id] = count
    return wrong, [r["values"] for r in per_node[0]]


@dataclass
class HealTimes:
    """Seconds after the heal at which the status poll first saw each thing.

    `drained` is per directed link (`n1>n2`: what n1 sends n2): when the
    sender had nothing pending for that peer any more, every delta sent and
    acknowledged.  `slowest_status` is each node's longest status answer
    during the heal, as [seconds, asked at]: the external sign of a busy event
    loop (or, when commits are synchronous, of replies held for a commit).
    """

    all_two_siblings: float | None = None
    converged: float | None = None
    verified: float | None = None
    quiescent: float | None = None
    drained: dict[str, float] = field(default_factory=dict)
    slowest_status: dict[str, list[float]] = field(default_factory=dict)
    failed_checks: int = 0

    def note(self, s: Session, statuses: dict[str, Body], healed_at: float) -> float:
        """Record what this poll saw; returns its time, in seconds after the heal."""
        now = time.monotonic() - healed_at
        for node_id, status in statuses.items():
            for peer in status["peers"]:
                if peer["connected"] and peer["pending"] == 0:
                    self.drained.setdefault(link_name(node_id, peer["id"]), now)
        for node_id, (asked, latency) in s.latency.items():
            if latency > self.slowest_status.get(node_id, [0.0])[0]:
                self.slowest_status[node_id] = [latency, asked - healed_at]
        return now


def _all_keys_two_siblings(statuses: dict[str, Body], keys: int) -> bool:
    """What status can tell: every node has every key and none has more than 2 siblings."""
    return all(
        st["keys"]["mv"] == keys and st["max_siblings"]["mv"] == 2 for st in statuses.values()
    )


async def await_sampled_convergence(
    s: Session, keys: int, actors: Sequence[str], size: int, healed_at: float, times: HealTimes
) -> dict[str, Body]:
    """Poll until status and a random sample of reads say every node has converged.

    Status only shows key counts and the largest sibling count, which every
    node reaches before its last keys get their second sibling (here every
    node even has every key before the heal); so a passing status is checked
    against a random sample of reads on every node, whose end stops the clock
    (`times.converged`).  Returns the statuses of that moment.
    """
    rng = random.Random(1)
    while True:
        statuses = await s.status()
        now = times.note(s, statuses, healed_at)
        if _all_keys_two_siblings(statuses, keys):
            if times.all_two_siblings is None:
                times.all_two_siblings = now
            sample = sorted(rng.sample(range(keys), min(SAMPLE_KEYS, keys)))
            wrong, _ = await read_mismatches(s, sample, actors, size)
            if not wrong:
                times.converged = time.monotonic() - healed_at
                return statuses
            times.failed_checks += 1
        await asyncio.sleep(POLL_SECONDS)


async def await_quiescence(s: Session, healed_at: float, times: HealTimes) -> dict[str, Body]:
    """Poll until no node has anything pending for any peer (every delta acknowledged)."""
    deadline = time.monotonic() + QUIESCE_TIMEOUT
    while True:
        statuses = await s.status()
        now = times.note(s, statuses, healed_at)
        if all(p["pending"] == 0 for st in statuses.values() for p in st["peers"]):
            times.quiescent = now
            return statuses
        if time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(POLL_SECONDS)


def gossip_bytes(before: dict[str, Body], after: dict[str, Body]) -> dict[str, int]:
    return {n: after[n]["gossip_bytes_sent"] - before[n]["gossip_bytes_sent"] for n in after}


def traffic_by_type(stats: dict[str, LinkStats]) -> dict[str, dict[str, list[int]]]:
    """Every link's traffic summed: direction → type → [lines, bytes]."""
    out: dict[str, dict[str, list[int]]] = {"sent": {}, "replies": {}}
    for link in stats.values():
        for direction in out:
            for name, (lines, size, _, _) in link[direction].items():
                entry = out[direction].setdefault(name, [0, 0])
                entry[0] += lines
                entry[1] += size
    return out


@dataclass
class LinkTimeline:
    """One healed link, in seconds after the heal, from the proxy's clock and the status poll."""

    up: float | None
    first_merge: float | None
    last_merge: float | None
    last_ack: float | None
    drained: float | None
    bytes_sent: int


def link_timelines(
    stats: dict[str, LinkStats], links: Sequence[str], times: HealTimes, healed_at: float
) -> dict[str, LinkTimeline]:
    """Each healed link's timeline: the proxy saw the times, the status poll saw `drained`."""

    def since(t: float | None) -> float | None:
        return None if t is None else t - healed_at

    def merges(direction: Body, index: int, pick: Callable[..., float]) -> float | None:
        found = [
            v[index] for name, v in direction.items() if name.endswith(("_merge", "_merge_ok"))
        ]
        return since(pick(found)) if found else None

    out = {}
    for link in links:
        st = stats[link]
        out[link] = LinkTimeline(
            up=since(st["accepted"][0]) if st["accepted"] else None,
            first_merge=merges(st["sent"], 2, min),
            last_merge=merges(st["sent"], 3, max),
            last_ack=merges(st["replies"], 3, max),
            drained=times.drained.get(link),
            bytes_sent=sum(v[1] for v in st["sent"].values()),
        )
    return out


async def run_converge(args: argparse.Namespace, s: Session) -> Report:
    """Cut n1 off, write every key on both sides, heal, and measure the way back."""
    first, rest = s.ids[0], s.ids[1:]
    partition = s.links_between([first], rest)
    timeline, actors = await _diverge(args, s, partition, first, rest)
    return await _heal(args, s, partition, actors, timeline)


async def _diverge(
    args: argparse.Namespace, s: Session, partition: list[str], first: str, rest: list[str]
) -> tuple[dict[str, float], list[str]]:
    """Partition, write every key at `first` and at `rest[0]`, let the majority side agree.

    Returns the phase times and the actors of the two writers' dots.
    """
    timeline: dict[str, float] = {}
    s.phase = "partitioning"
    started = time.monotonic()
    await s.cut(partition)
    await s.wait_links(lambda a, b: first not in (a, b))
    timeline["partition"] = time.monotonic() - started

    s.phase = "writing on both sides"
    started = time.monotonic()
    actors = await asyncio.gather(*(write_side(s, w, args.keys, args) for w in (first, rest[0])))
    written = time.monotonic()
    timeline["writes"] = written - started

    s.phase = "waiting for the majority side to converge"
    await _await_majority(s, rest, args.keys)
    timeline["majority"] = time.monotonic() - written
    return timeline, list(actors)


async def _heal(
    args: argparse.Namespace,
    s: Session,
    partition: list[str],
    actors: list[str],
    timeline: dict[str, float],
) -> Report:
    """Heal and poll until converged, quiescent and verified; gossip bytes from the heal on."""
    assert s.proxy is not None
    s.phase = "healing and waiting for convergence"
    before = await s.status()
    await s.proxy.reset()
    profiler = Profiler(Path(args.profile), s.children) if args.profile else None
    if profiler is not None:
        profiler.start(s.nodes.values())
    healed_at = time.monotonic()
    await s.heal(partition)
    times = HealTimes()
    while True:
        at_convergence = await await_sampled_convergence(
            s, args.keys, actors, args.value_bytes, healed_at, times
        )
        final = await await_quiescence(s, healed_at, times)
        if profiler is not None:
            await profiler.stop()
        stats = await s.proxy.stats()
        # every key on every node, read only now so the long check blurs no timing
        wrong, reads = await read_mismatches(s, range(args.keys), actors, args.value_bytes)
        if not wrong:
            times.verified = time.monotonic() - healed_at
            break
        times.failed_checks += 1

    state_sizes = [len(orjson.dumps(wire_state(values))) for values in reads]
    return converge_report(
        args,
        timeline=timeline,
        times=times,
        sent_at_convergence=gossip_bytes(before, at_convergence),
        sent_final=gossip_bytes(before, final),
        state_size=sum(state_sizes) / len(state_sizes),
        by_type=traffic_by_type(stats),
        links=link_timelines(stats, partition, times, healed_at),
        profile=profiler.summary() if profiler is not None else [],
    )


async def _await_majority(s: Session, majority: Sequence[str], keys: int) -> None:
    """Until every majority node holds every key and the writer has nothing pending for them."""
    writer = majority[0]
    while True:
        statuses = await s.status()
        holds = all(statuses[n]["keys"]["mv"] == keys for n in majority)
        pending = sum(p["pending"] for p in statuses[writer]["peers"] if p["id"] in majority)
        if holds and pending == 0:
            return
        await asyncio.sleep(POLL_SECONDS)


def converge_report(
    args: argparse.Namespace,
    *,
    timeline: dict[str, float],
    times: HealTimes,
    sent_at_convergence: dict[str, int],
    sent_final: dict[str, int],
    state_size: float,
    by_type: dict[str, dict[str, list[int]]],
    links: dict[str, LinkTimeline],
    profile: list[str],
) -> Report:
    keys = args.keys
    total = sum(sent_final.values())
    per_key = total / keys
    ratio = per_key / state_size
    assert times.converged is not None
    names = ("keys", "nodes", "gossip_interval_ms", "keyspace", "value_bytes")
    params = {name: getattr(args, name) for name in (*names, "connections", "window", "memory")}
    figures = {
        "timeline_s": timeline,
        "writes_per_s": 2 * keys / timeline["writes"],
        "after_heal_s": vars(times),
        "healed_links_s": {link: vars(t) for link, t in links.items()},
        "gossip_bytes_at_convergence": sent_at_convergence,
        "gossip_bytes": sent_final,
        "gossip_bytes_per_key": per_key,
        "state_bytes_per_key": state_size,
        "gossip_to_state_ratio": ratio,
        "link_traffic_by_type": by_type,
        "profile": profile,
    }
    storage = "in memory" if args.memory else "on disk (data_dir in the temp dir)"
    lines = [
        f"converge: {keys} {args.keyspace} keys written on both sides of {{n1}} | "
        f"{{n2..n{args.nodes}}}, {args.value_bytes}-byte values, gossip every "
        f"{args.gossip_interval_ms} ms, nodes {storage}",
        "",
        "phase                                           seconds",
        row("partition n1 (links seen down)", f"{timeline['partition']:.3f}"),
        row(
            f"writes: {keys} at n1 and at n2",
            f"{timeline['writes']:.3f}",
            f"{figures['writes_per_s']:,.0f} writes/s, {args.connections} conns x "
            f"{args.window} in flight per node",
        ),
        row("majority side converged, after the writes", f"{timeline['majority']:.3f}"),
        "after the heal:",
        row("  status: all keys, 2 siblings max, everywhere", _seconds(times.all_two_siblings)),
        row("  converged (status + 500-key sample)", _seconds(times.converged)),
        row("  quiescent (every delta acknowledged)", _seconds(times.quiescent)),
        row("  verified (every key on every node)", _seconds(times.verified)),
        "  slowest status answer (busy loop, or held for a commit):",
        *[
            row(f"    {n}", f"{t * 1000:.0f} ms", f"asked at {at:.3f}")
            for n, (t, at) in sorted(times.slowest_status.items())
        ],
        "  healed link      up   1st merge  last merge  last ack   drained      bytes  per key",
        *_link_rows(links, keys),
        "",
        "gossip after the heal                               bytes  per key",
        *[row(f"sent by {n}", f"{b:,}", f"{b / keys:.1f}") for n, b in sorted(sent_final.items())],
        row("sent by all nodes (status gossip_bytes_sent)", f"{total:,}", f"{per_key:.1f}"),
        row("key state at the end (2 siblings, orjson)", "", f"{state_size:.1f}"),
        "on the links (proxies), by message type     messages      bytes  per key",
        *_type_rows(by_type, keys),
        *(["", "profile from the heal to quiescence (py-spy):", *profile] if profile else []),
    ]
    targets = [
        Target("seconds to converge after the heal", times.converged, CONVERGE_SECONDS_LIMIT, "s"),
        Target("gossip bytes per key / key state size", ratio, GOSSIP_RATIO_LIMIT, "ratio"),
    ]
    return Report("converge", params, figures, lines, targets)


def _link_rows(links: dict[str, LinkTimeline], keys: int) -> list[str]:
    return [
        f"  {link:<10}{_seconds(t.up):>9}{_seconds(t.first_merge):>12}"
        f"{_seconds(t.last_merge):>12}{_seconds(t.last_ack):>10}{_seconds(t.drained):>10}"
        f"{t.bytes_sent:>11,}  {t.bytes_sent / keys:.1f}"
        for link, t in links.items()
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _type_rows(by_type: dict[str, dict[str, list[int]]], keys: int) -> list[str]:
    out = []
    for direction, types in by_type.items():
        for name, (count, size) in sorted(types.items(), key=lambda kv: -kv[1][1]):
            out.append(f"  {direction + ' ' + name:<36}{count:>10,}{size:>11,}  {size / keys:.1f}")
    return out


# -- pipelined load --------------------------------------------------------------------------------

LOAD_DRAIN_TIMEOUT = 30.0  # for the replies still in flight when a timed run ends
POOL_MIN_LINES = 1 << 16
OPS = ("mv_write", "mv_read", "kv_put", "lww_write", "mvcc_put", "mvcc_get")
ERROR_MARK = b'"error"'  # in every error reply; anything else that contains it is parsed


class LoadConnection(asyncio.Protocol):
    """One client connection keeping `window` requests in flight: one new line per reply.

    Lines come ready-encoded from `source`, and replies are matched to their
    send times in order (a node answers each connection in order), so the client
    does no JSON work except for a chunk that may hold an error reply.
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
    node_cpu: float | None  # the node's, the same way (Linux /proc only)
    other_cpu: float | None = None  # the machine's busy CPU outside client and node, the same way

    @property
    def ops_per_s(self) -> float:
        return self.replies / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return 1000 * self.latencies[min(len(self.latencies) - 1, int(q * len(self.latencies)))]

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
        """Several runs as one: all their replies over all their seconds, every latency."""
        seconds = sum(r.seconds for r in results)
        first_errors = [r.first_error for r in results if r.first_error is not None]

        def cores(of: Callable[[LoadResult], float | None]) -> float | None:
            spent = [(of(r), r.seconds) for r in results]
            if any(value is None for value, _ in spent):
                return None
            return sum(value * t for value, t in spent if value is not None) / seconds

        return cls(
            seconds=seconds,
            replies=sum(r.replies for r in results),
            latencies=sorted(itertools.chain.from_iterable(r.latencies for r in results)),
            errors=sum(r.errors for r in results),
            first_error=first_errors[0] if first_errors else None,
            client_cpu=sum(r.client_cpu * r.seconds for r in results) / seconds,
            node_cpu=cores(lambda r: r.node_cpu),
            other_cpu=cores(lambda r: r.other_cpu),
        )


def machine_busy_seconds() -> float | None:
    """CPU seconds all the machine's CPUs have been busy since boot, from /proc/stat."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a process has used so far, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def tree_cpu_seconds(pid: int) -> float | None:
    """`process_cpu_seconds` of a process plus those of its live children.

    A durable node checkpoints in a child process of its own, whose CPU the
    node's own figure leaves out until the child exits.
    """
    own = process_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(process_cpu_seconds(child) or 0.0 for child in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    """The live children of `pid`, by the parent field of every /proc/N/stat.

    (/proc/PID/task/TID/children would be quicker, but not every kernel has it.)
    """
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


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
                lambda s=source, n=name: LoadConnection(s, window, n), LOOPBACK, node.port
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
    latencies = sorted(itertools.chain.from_iterable(conn.latencies for conn in conns))
    first_errors = [conn.first_error for conn in conns if conn.first_error is not None]
    return LoadResult(
        seconds=elapsed,
        replies=sum(conn.counted for conn in conns),
        latencies=latencies,
        errors=sum(conn.errors for conn in conns),
        first_error=first_errors[0] if first_errors else None,
        client_cpu=client_cpu,
        node_cpu=node_cpu,
        other_cpu=other_cpu,
    )


def encode(body: Body, msg_id: int) -> bytes:
    return orjson.dumps({**body, "msg_id": msg_id}) + b"\n"


def parse_mix(text: str) -> list[tuple[str, int]]:
    """`mv_write,mv_read` or `mv_write:3,mv_read:1`: each op with its weight (default 1)."""
    mix: list[tuple[str, int]] = []
    for part in text.split(","):
        op, _, weight_text = part.strip().partition(":")
        if op not in OPS:
            raise argparse.ArgumentTypeError(f"unknown op {op!r}: one of {', '.join(OPS)}")
        try:
            weight = int(weight_text) if weight_text else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer weight: {part!r}") from None
        if weight < 1:
            raise argparse.ArgumentTypeError(f"a weight must be at least 1: {part!r}")
        mix.append((op, weight))
    if not mix:
        raise argparse.ArgumentTypeError("an empty mix")
    return mix


def parse_depths(text: str) -> list[int]:
    """`1,4,16,64`: requests in flight per connection, in the order given, each once."""
    try:
        depths = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of whole numbers: {text!r}") from None
    if min(depths) < 1:
        raise argparse.ArgumentTypeError(f"a depth must be at least 1: {text!r}")
    return list(dict.fromkeys(depths))


def request_body(op: str, key_index: int, serial: int, size: int) -> Body:
    """One request of `op` on key `key_index`; `serial` makes kv_put clocks advance."""
    key = key_name(key_index)
    value = value_for("bench", serial, size)
    if op == "mv_write":
        return {"type": op, "key": key, "value": value}
    if op == "kv_put":
        return {"type": op, "key": key, "value": value, "clock": [serial + 1]}
    if op in ("lww_write", "mvcc_put"):  # the node's hybrid clock supplies the timestamp
        return {"type": op, "key": key, "value": value}
    return {"type": op, "key": key}  # mv_read, mvcc_get: the newest


def request_pool(mix: Sequence[tuple[str, int]], keys: int, lines: int, size: int) -> list[bytes]:
    """`lines` encoded requests drawn from `mix` on random keys, msg_id = position + 1.

    A connection cycles through the pool from its own offset; the pool is far
    longer than a window, so no line is ever in flight twice on one connection.
    """
    rng = random.Random(5)
    ops = rng.choices([op for op, _ in mix], weights=[w for _, w in mix], k=lines)
    return [
        encode(request_body(op, rng.randrange(keys), i, size), i + 1) for i, op in enumerate(ops)
    ]


def cycle_from(pool: Sequence[bytes], offset: int) -> Iterator[bytes]:
    return itertools.cycle([*pool[offset:], *pool[:offset]])


def fill_lines(op: str, indices: range, size: int) -> Iterator[bytes]:
    """One write of `op` per key of `indices`, encoded as they are sent."""
    for i in indices:
        yield encode({"type": op, "key": key_name(i), "value": value_for("n1", i, size)}, i + 1)


def split_range(count: int, parts: int) -> list[range]:
    share = -(-count // parts)
    return [range(i, min(i + share, count)) for i in range(0, count, share)]


async def fill(
    node: NodeHandle, op: str, keys: int, size: int, connections: int, window: int
) -> LoadResult:
    """Write every key once with `op` (value: `value_for("n1", i)`), pipelined; no errors."""
    sources = [fill_lines(op, part, size) for part in split_range(keys, connections)]
    result = await drive(node, sources, window, None)
    if result.errors:
        raise BenchError(f"{result.errors} of {keys} {op} writes failed: {result.first_error}")
    if result.replies != keys:
        raise BenchError(f"{result.replies} replies to {keys} {op} writes")
    return result


# -- throughput --------------------------------------------------------------------------------

DURABLE_RATIO_LIMIT = 0.8  # issue 4: durable mv_write at least 0.8x in memory
FLOOR_RATIO_LIMITS = {"mv_write": 0.40, "mv_read": 0.50}  # issue 5: a durable node / the floor
P99_LIMIT_MS = 10.0  # issue 5: a durable node's p99 under the load the floor ratios are set for
FLOOR_ROUNDS = 2  # --floor's default: floor, node, floor, node
BOTH_ROUNDS = 3  # --both's default: durable, memory, three times over
SETTLE_TIMEOUT = 10.0  # --both: the most a run waits for the other node to go idle
PLOT_INSTALL = ".venv/bin/pip install -e '.[plot]'"  # the optional extra that has matplotlib
PRELOAD_FOR = {"mv_read": "mv_write", "mvcc_get": "mvcc_put"}  # reads need keys to read
CLIENT_NOTE = (
    "the client runs in this process and shares the machine's CPUs with the node "
    "(client and server CPU below, in cores; other: the machine's busy CPU outside both, "
    "which is other work skewing the figures, plus the kernel flushing a durable node's writes)"
)
SERVER_LABELS = {
    "floor": "floor (uvloop + orjson)",
    "durable": "node, durable",
    "memory": "node, in memory",
}


@dataclass
class TimedRun:
    """One timed run of `throughput`: the node in one storage mode, or the floor."""

    server: str  # "durable", "memory" or "floor"
    depth: int  # requests in flight per connection
    round: int
    result: LoadResult


async def run_throughput(args: argparse.Namespace, s: Session) -> Report:
    """Preload what reads need on every node measured, then the timed runs, interleaved.

    Every depth is measured `--rounds` times.  The machine's speed drifts by
    tens of percent from one minute to the next, so servers that are compared
    take turns: with --both a durable and an in-memory node run side by side
    and each round measures one, then the other; with the floor, each node run
    follows a floor run under the same load.  Either way both see the machine
    in about the same state (drift skews a pair less than two runs far apart).
    """
    mix: list[tuple[str, int]] = args.mix
    depths: list[int] = args.depths or [args.in_flight]
    rounds = args.rounds or (FLOOR_ROUNDS if args.floor else BOTH_ROUNDS if args.both else 1)
    s.phase = "building the request pool"
    pool_lines = max(POOL_MIN_LINES, 4 * args.connections * max(depths))
    pool = request_pool(mix, args.keys, pool_lines, args.value_bytes)
    floor = None
    if args.floor:
        s.phase = "starting the floor"
        floor = await s.start_floor()
    async with contextlib.AsyncExitStack() as stack:
        nodes = await throughput_nodes(args, s, stack)
        preload = await preload_nodes(args, s, nodes, max(depths))
        runs = await timed_rounds(args, s, pool, nodes, floor, depths, rounds)
    report = throughput_report(args, mix, runs, preload)
    if args.chart:
        s.phase = f"drawing {args.chart}"
        p = report.params
        title = (
            f"replica throughput: mix {p['mix']}, {p['connections']} connections, "
            f"{p['seconds']:g} s per run, {p['value_bytes']}-byte values"
        )
        draw_chart(Path(args.chart), report.figures["summary"], title)
        report.lines.append(f"chart: {args.chart}")
    return report


async def throughput_nodes(
    args: argparse.Namespace, s: Session, stack: contextlib.AsyncExitStack
) -> dict[str, NodeHandle]:
    """The node measured in each storage mode, by mode, in the order their rounds take turns.

    The session's own node is durable unless --memory.  --both starts an
    in-memory node beside it as a session of its own (node m1: its own port,
    directory and config, no peers), so the two never gossip and each sees
    only the load aimed at it; `stack` stops its clients and shows its log if
    the run fails.
    """
    own = s.nodes[s.ids[0]]
    if not args.both:
        return {"memory" if args.memory else "durable": own}
    s.phase = "starting the in-memory node beside the durable one"
    beside = Session(s.directory, s.children, 1, s.gossip_ms, memory=True, id_prefix="m")
    await stack.enter_async_context(running(beside))
    return {"durable": own, "memory": beside.nodes[beside.ids[0]]}


async def preload_nodes(
    args: argparse.Namespace, s: Session, nodes: dict[str, NodeHandle], window: int
) -> dict[str, float]:
    """Write every key the mix's reads need, node after node: the seconds each node took.

    All of it before the first timed run, so that no round of one node runs
    beside the other's preload.
    """
    preloads = sorted({PRELOAD_FOR[op] for op, _ in args.mix if op in PRELOAD_FOR})
    seconds: dict[str, float] = {}
    if not preloads:
        return seconds
    for mode, node in nodes.items():
        started = time.monotonic()
        for op in preloads:
            s.phase = f"preloading {args.keys} keys with {op} ({mode})"
            await fill(node, op, args.keys, args.value_bytes, args.connections, window)
        seconds[mode] = time.monotonic() - started
    return seconds


async def timed_rounds(
    args: argparse.Namespace,
    s: Session,
    pool: Sequence[bytes],
    nodes: dict[str, NodeHandle],
    floor: NodeHandle | None,
    depths: Sequence[int],
    rounds: int,
) -> list[TimedRun]:
    """At each depth, `rounds` rounds; each round the floor (if any), then every node in turn.

    Before a node's run every other node must be idle, its checkpointer
    included, so that the work one node left behind (a durable node's
    checkpoint after its writes) never counts against the other.
    """
    runs: list[TimedRun] = []
    for depth in depths:
        for round_no in range(1, rounds + 1):
            if floor is not None:
                runs.append(await timed_run(s, args, pool, floor, "floor", depth, round_no))
            for mode, node in nodes.items():
                for other_mode, other in nodes.items():
                    if other is not node:
                        s.phase = f"waiting for the {other_mode} node to be idle"
                        await wait_idle(s, other, SETTLE_TIMEOUT, tree_cpu_seconds)
                runs.append(await timed_run(s, args, pool, node, mode, depth, round_no))
    return runs


async def timed_run(
    s: Session,
    args: argparse.Namespace,
    pool: Sequence[bytes],
    target: NodeHandle,
    server: str,
    depth: int,
    round_no: int,
) -> TimedRun:
    """The pool's requests against `target` for `args.seconds`, `depth` in flight per connection.

    Each connection cycles through the pool from its own offset, the same
    offsets on every run, so every server answers the same requests.
    """
    s.phase = f"measuring {server} at {args.connections} x {depth}, round {round_no}"
    step = len(pool) // args.connections
    sources = [cycle_from(pool, i * step) for i in range(args.connections)]
    result = await drive(target, sources, depth, args.seconds)
    s.check_alive(target)
    return TimedRun(server, depth, round_no, result)


def throughput_summary(runs: Sequence[TimedRun]) -> list[dict[str, Any]]:
    """One entry per server and depth: best and median ops/s of its rounds, the rest pooled."""
    groups: dict[tuple[str, int], list[LoadResult]] = {}
    for run in runs:
        groups.setdefault((run.server, run.depth), []).append(run.result)
    return [
        {
            "server": server,
            "depth": depth,
            "rounds": len(results),
            "best_ops_per_s": max(r.ops_per_s for r in results),
            "median_ops_per_s": statistics.median(r.ops_per_s for r in results),
            **LoadResult.pooled(results).figures(),  # ops_per_s: over all rounds' seconds
        }
        for (server, depth), results in groups.items()
    ]


def throughput_ratios(runs: Sequence[TimedRun], modes: Sequence[str]) -> list[dict[str, Any]]:
    """Node / floor per depth, or durable / in memory: of the medians, of the bests, per round.

    Per round pairs the runs of the same round, which ran one right after the other.
    """
    servers = {run.server for run in runs}
    pairs = [(mode, "floor") for mode in modes] if "floor" in servers else []
    if not pairs and {"durable", "memory"} <= servers:
        pairs = [("durable", "memory")]
    ratios = []
    for depth in dict.fromkeys(run.depth for run in runs):
        for top, bottom in pairs:
            a, b = _rates_by_round(runs, top, depth), _rates_by_round(runs, bottom, depth)
            ratios.append(
                {
                    "of": f"{top} / {bottom}",
                    "depth": depth,
                    "median": statistics.median(a.values())
                    / max(statistics.median(b.values()), 1e-9),
                    "best": max(a.values()) / max(max(b.values()), 1e-9),
                    "per_round": [a[i] / max(b[i], 1e-9) for i in sorted(a) if i in b],
                }
            )
    return ratios


def _rates_by_round(runs: Sequence[TimedRun], server: str, depth: int) -> dict[int, float]:
    return {r.round: r.result.ops_per_s for r in runs if (r.server, r.depth) == (server, depth)}


def throughput_targets(
    args: argparse.Namespace,
    mix: list[tuple[str, int]],
    summary: list[dict[str, Any]],
    ratios: list[dict[str, Any]],
) -> list[Target]:
    """The issues' targets, judged at the `--in-flight` depth, the load they are set for."""
    ops = [op for op, _ in mix]
    at = f"{args.connections} x {args.in_flight}"
    targets = []
    for ratio in ratios:
        if ratio["depth"] != args.in_flight:
            continue
        if ratio["of"] == "durable / memory" and ops == ["mv_write"]:
            targets.append(
                Target(
                    f"mv_write durable / in memory at {at}",
                    ratio["median"],
                    DURABLE_RATIO_LIMIT,
                    "ratio",
                    at_least=True,
                )
            )
        if ratio["of"] == "durable / floor" and len(ops) == 1 and ops[0] in FLOOR_RATIO_LIMITS:
            (node,) = [
                e for e in summary if (e["server"], e["depth"]) == ("durable", args.in_flight)
            ]
            targets += [
                Target(
                    f"durable {ops[0]} / floor at {at}",
                    ratio["median"],
                    FLOOR_RATIO_LIMITS[ops[0]],
                    "ratio",
                    at_least=True,
                ),
                Target(f"durable {ops[0]} p99 at {at}", node["p99_ms"], P99_LIMIT_MS, "ms"),
                Target(f"durable {ops[0]} error replies", node["errors"], 0, "replies"),
            ]
    return targets


def throughput_report(
    args: argparse.Namespace,
    mix: list[tuple[str, int]],
    runs: list[TimedRun],
    preload: dict[str, float],
) -> Report:
    mix_text = ",".join(f"{op}:{w}" for op, w in mix)
    depths = list(dict.fromkeys(run.depth for run in runs))
    rounds = max(run.round for run in runs)
    modes = list(dict.fromkeys(run.server for run in runs if run.server != "floor"))
    summary = throughput_summary(runs)
    ratios = throughput_ratios(runs, modes)
    floor = any(run.server == "floor" for run in runs)
    nodes = "one node"
    if len(modes) > 1:
        nodes = "a durable and an in-memory node side by side, their rounds alternating"
    lines = [
        f"throughput: mix {mix_text}, {args.connections} connections x "
        f"{','.join(map(str, depths))} in flight, {args.seconds:g} s per run, {args.keys} keys, "
        f"{args.value_bytes}-byte values, {nodes} (durable: data_dir in the temp dir, "
        "durability sync)"
        + (", alternating with the floor (scripts/bench_floor.py)" if floor else ""),
        f"note: {CLIENT_NOTE}",
        "",
        f"  {'run':<10}{'depth':>6}{'round':>6}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p999 ms':>9}{'errors':>8}{'client':>8}{'server':>8}{'other':>7}",
    ]
    for run in runs:
        r = run.result
        server_cpu = "-" if r.node_cpu is None else f"{r.node_cpu:.2f}"
        other_cpu = "-" if r.other_cpu is None else f"{r.other_cpu:.2f}"
        lines.append(
            f"  {run.server:<10}{run.depth:>6}{run.round:>6}{r.ops_per_s:>10,.0f}"
            f"{r.percentile_ms(0.5):>9.2f}{r.percentile_ms(0.99):>9.2f}"
            f"{r.percentile_ms(0.999):>9.2f}{r.errors:>8}{r.client_cpu:>8.2f}{server_cpu:>8}"
            f"{other_cpu:>7}"
        )
    lines += [row(f"preload ({mode})", f"{seconds:.2f} s") for mode, seconds in preload.items()]
    if rounds > 1:
        lines += [
            "",
            f"  {'server':<10}{'depth':>6}{'rounds':>7}{'best ops/s':>12}{'median ops/s':>14}"
            f"{'p50 ms':>9}{'p99 ms':>9}{'p999 ms':>9}  (latencies of all rounds)",
            *[
                f"  {e['server']:<10}{e['depth']:>6}{e['rounds']:>7}{e['best_ops_per_s']:>12,.0f}"
                f"{e['median_ops_per_s']:>14,.0f}{e['p50_ms']:>9.2f}{e['p99_ms']:>9.2f}"
                f"{e['p999_ms']:>9.2f}"
                for e in summary
            ],
        ]
    if ratios:
        lines.append("")
    for ratio in ratios:
        lines.append(
            row(
                f"{ratio['of']} at {args.connections} x {ratio['depth']}",
                f"{ratio['median']:.3f}",
                f"of the medians; of the bests {ratio['best']:.3f}; per round "
                + " ".join(f"{x:.3f}" for x in ratio["per_round"])
                if rounds > 1
                else "",
            )
        )
    figures: dict[str, Any] = {
        "runs": [
            {"server": run.server, "depth": run.depth, "round": run.round, **run.result.figures()}
            for run in runs
        ],
        "summary": summary,
        "ratios": ratios,
        "preload_s": preload,
    }
    params = {
        "mix": mix_text,
        "connections": args.connections,
        "in_flight": args.in_flight,
        "depths": depths,
        "rounds": rounds,
        "seconds": args.seconds,
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "storage": modes,
        "floor": floor,
        "client_note": CLIENT_NOTE,
    }
    targets = throughput_targets(args, mix, summary, ratios)
    if floor and not targets:
        lines.append(
            f"  (the floor targets hold a durable node, a mix of only mv_write or mv_read, "
            f"at {args.connections} x {args.in_flight}: none applies to this run)"
        )
    report = Report("throughput", params, figures, lines, targets)
    failed = [run for run in runs if run.result.errors]
    if failed:
        report.failure = "; ".join(
            f"{run.server} at depth {run.depth}, round {run.round}: {run.result.errors} error "
            f"replies, the first {run.result.first_error}"
            for run in failed
        )
    return report


def draw_chart(path: Path, summary: list[dict[str, Any]], title: str) -> None:
    """Ops/s (median of rounds) and p99 against the depth, one line per server, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, (rate, p99) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    for server in dict.fromkeys(e["server"] for e in summary):
        points = sorted(
            (e["depth"], e["median_ops_per_s"], e["p99_ms"])
            for e in summary
            if e["server"] == server
        )
        depths = [p[0] for p in points]
        label = SERVER_LABELS.get(server, server)
        rate.plot(depths, [p[1] for p in points], marker="o", label=label)
        p99.plot(depths, [p[2] for p in points], marker="o", label=label)
    for axes, ylabel in ((rate, "ops/s (median of rounds)"), (p99, "p99 latency, ms")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted({e["depth"] for e in summary}))
        axes.xaxis.set_major_formatter(ticker.ScalarFormatter())
        axes.set_xlabel("requests in flight per connection (pipeline depth)")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend()
    rate.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    m = machine()
    figure.suptitle(
        f"{title}\n{m['nproc']} CPUs ({m['cpu_model']}), {m['implementation']} {m['python']}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load {m['loadavg_1m']}",
        fontsize=9,
    )
    try:
        figure.savefig(path, dpi=120)
    except OSError as exc:
        raise BenchError(f"cannot write the chart to {path}: {exc}") from None
    finally:
        plt.close(figure)


# -- restart -----------------------------------------------------------------------------------

RESTART_SECONDS_LIMIT = 10.0
RESTART_TIMEOUT = 300.0
LOADED_LINE = re.compile(r"loaded (\d+) keys in (\d+) ms")
NOT_READY_CODE = 11


async def run_restart(args: argparse.Namespace, s: Session) -> Report:
    """Fill a durable node, SIGKILL it, and time its restart to a correct first read."""
    node_id = s.ids[0]
    node = s.nodes[node_id]
    s.phase = f"writing {args.keys} mv keys"
    load = await fill(node, "mv_write", args.keys, args.value_bytes, args.connections, args.window)

    s.phase = f"killing {node_id} with SIGKILL"
    await s.stop_node(node_id, signal.SIGKILL)
    rng = random.Random(7)
    sample = rng.sample(range(args.keys), min(args.sample, args.keys))
    s.log_level = "info"  # for the "loaded N keys in X ms" line
    s.phase = f"restarting {node_id} over {args.keys} keys"
    s.start_node(node_id)
    ready, first_connect = await first_correct_read(s, node, sample[0], args.value_bytes)
    await s.wait_ready(node_id)

    s.phase = "checking the sample and the key count"
    wrong = await sample_mismatches(s, node_id, sample, args.value_bytes)
    status = await s.status()
    stored = status[node_id]["keys"]["mv"]
    loaded = LOADED_LINE.findall(node.log.read_text(errors="replace"))
    report = restart_report(args, load, ready, first_connect, loaded[-1] if loaded else None)
    report.figures.update({"sample": len(sample), "sample_wrong": len(wrong), "mv_keys": stored})
    report.lines.append(row("sampled keys read back", f"{len(sample) - len(wrong)}/{len(sample)}"))
    report.lines.append(row("mv keys after the restart (status)", f"{stored:,}"))
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} of {len(sample)} sampled keys read back wrong: {wrong[0]}")
    if stored != args.keys:
        problems.append(f"the node holds {stored} mv keys after the restart, not {args.keys}")
    if not loaded:
        problems.append(f"no 'loaded N keys in X ms' line in {node.log}")
    report.failure = "; ".join(problems)
    return report


async def first_correct_read(
    s: Session, node: NodeHandle, index: int, size: int
) -> tuple[float, float]:
    """Seconds from the process start to a correct mv_read, and to the first accepted connection.

    Polls with a new connection every few milliseconds until the node listens;
    a reply of error 11 (still loading) is asked again.
    """
    deadline = node.spawned_at + RESTART_TIMEOUT
    first_connect: float | None = None
    request = encode({"type": "mv_read", "key": key_name(index)}, 1)
    expected = value_for(node.id, index, size)
    while time.monotonic() < deadline:
        s.check_alive()
        try:
            reader, writer = await asyncio.open_connection(LOOPBACK, node.port, limit=READ_LIMIT)
        except OSError:
            await asyncio.sleep(0.005)
            continue
        if first_connect is None:
            first_connect = time.monotonic() - node.spawned_at
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                line = await reader.readline()
                if not line:
                    break
                reply = orjson.loads(line)
                if reply.get("type") == "error" and reply.get("code") == NOT_READY_CODE:
                    await asyncio.sleep(0.005)
                    continue
                values = reply.get("values")
                if reply.get("type") != "mv_read_ok" or not values:
                    raise BenchError(f"{key_name(index)} after the restart: {reply!r:.300}")
                if [v.get("value") for v in values] != [expected]:
                    raise BenchError(f"{key_name(index)} read back wrong: {reply!r:.300}")
                return time.monotonic() - node.spawned_at, first_connect
        finally:
            writer.close()
    raise BenchError(f"{node.id} gave no correct read {RESTART_TIMEOUT:g} s after its start")


async def sample_mismatches(
    s: Session, node_id: str, sample: Sequence[int], size: int
) -> list[str]:
    """The sampled keys whose mv_read is not exactly the one value written."""
    bodies = [{"type": "mv_read", "key": key_name(i)} for i in sample]
    replies = await spread(await s.connections(node_id, READ_CONNECTIONS), bodies, READ_WINDOW)
    wrong = []
    for i, reply in zip(sample, replies, strict=True):
        values = reply.get("values") if reply.get("type") == "mv_read_ok" else None
        if not values or [v.get("value") for v in values] != [value_for(node_id, i, size)]:
            wrong.append(f"{key_name(i)}: {reply!r:.200}")
    return wrong


def restart_report(
    args: argparse.Namespace,
    load: LoadResult,
    ready: float,
    first_connect: float,
    loaded: tuple[str, str] | None,
) -> Report:
    figures: dict[str, Any] = {
        "write_seconds": load.seconds,
        "writes_per_s": load.ops_per_s,
        "restart_to_first_connection_s": first_connect,
        "restart_to_correct_read_s": ready,
        "logged_keys": int(loaded[0]) if loaded else None,
        "logged_load_ms": int(loaded[1]) if loaded else None,
    }
    logged = f"{int(loaded[0]):,} keys in {int(loaded[1]):,} ms" if loaded else "-"
    lines = [
        f"restart: {args.keys} mv keys with {args.value_bytes}-byte values on one durable "
        f"node (durability sync), SIGKILL, restart",
        "",
        _writes_row(load, args),
        row("process start to first accepted connection", f"{first_connect:.3f} s"),
        row("process start to a correct mv_read", f"{ready:.3f} s"),
        row("the node's log: loaded", logged),
    ]
    params = {
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "connections": args.connections,
        "window": args.window,
        "sample": args.sample,
    }
    targets = [
        Target(
            "seconds from process start to a correct read",
            ready,
            RESTART_SECONDS_LIMIT,
            "s",
        )
    ]
    return Report("restart", params, figures, lines, targets)


def _writes_row(load: LoadResult, args: argparse.Namespace) -> str:
    return row(
        "writes",
        f"{load.seconds:.2f} s",
        f"{load.ops_per_s:,.0f} writes/s, {args.connections} conns x {args.window} in flight",
    )


# -- memory ------------------------------------------------------------------------------------

MEMORY_PER_KEY_LIMIT = 400  # issue 5: resident bytes per MV key, small values, 1,000,000 keys
MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")  # of /proc/PID/status, in kB there
IDLE_CPU = 0.05  # cores: a node using less than this is idle
IDLE_INTERVAL = 0.5  # seconds per CPU reading; two idle readings in a row make a node idle
IDLE_TIMEOUT = 60.0


def resident_memory(pid: int) -> dict[str, int]:
    """The process's resident memory in bytes: VmRSS, its anonymous and file parts, its peak."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"memory reads /proc/{pid}/status (Linux only): {exc}") from None
    found: dict[str, int] = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in MEMORY_FIELDS:
            found[name] = int(value.split()[0]) * 1024
    return found


async def wait_idle(
    s: Session,
    node: NodeHandle,
    timeout: float = IDLE_TIMEOUT,
    cpu_seconds: Callable[[int], float | None] = process_cpu_seconds,
) -> float | None:
    """Until the node's CPU stays under IDLE_CPU for two readings; the seconds that took.

    None when it never did within `timeout` (the figures are then taken anyway).
    `cpu_seconds` says what counts as the node's CPU: its process alone, or
    with its children (`tree_cpu_seconds`).
    """
    assert node.process is not None
    pid = node.process.pid
    started = time.monotonic()
    before = cpu_seconds(pid)
    idle = 0
    while time.monotonic() - started < timeout:
        await asyncio.sleep(IDLE_INTERVAL)
        s.check_alive(node)
        after = cpu_seconds(pid)
        if before is None or after is None:
            return None
        idle = idle + 1 if after - before < IDLE_CPU * IDLE_INTERVAL else 0
        if idle >= 2:
            return time.monotonic() - started
        before = after
    return None


async def run_memory(args: argparse.Namespace, s: Session) -> Report:
    """Resident memory of an idle node before and after it takes N mv keys."""
    node_id = s.ids[0]
    node = s.nodes[node_id]
    assert node.process is not None
    s.phase = "waiting for the fresh node to be idle"
    await wait_idle(s, node)
    before = resident_memory(node.process.pid)
    s.phase = f"writing {args.keys} mv keys"
    load = await fill(node, "mv_write", args.keys, args.value_bytes, args.connections, args.window)
    s.phase = "waiting for the node to be idle after the writes"
    idle_after = await wait_idle(s, node)
    after = resident_memory(node.process.pid)

    s.phase = "checking a sample and the key count"
    sample = random.Random(7).sample(range(args.keys), min(args.sample, args.keys))
    wrong = await sample_mismatches(s, node_id, sample, args.value_bytes)
    status = (await s.status())[node_id]
    stored = status["keys"]["mv"]
    report = memory_report(args, status["durability"]["mode"], load, idle_after, before, after)
    report.figures.update({"sample": len(sample), "sample_wrong": len(wrong), "mv_keys": stored})
    report.lines += [
        row("sampled keys read back", f"{len(sample) - len(wrong)}/{len(sample)}"),
        row("mv keys (status)", f"{stored:,}"),
    ]
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} of {len(sample)} sampled keys read back wrong: {wrong[0]}")
    if stored != args.keys:
        problems.append(f"the node holds {stored} mv keys, not {args.keys}")
    report.failure = "; ".join(problems)
    return report


def memory_report(
    args: argparse.Namespace,
    durability: str,
    load: LoadResult,
    idle_after: float | None,
    before: dict[str, int],
    after: dict[str, int],
) -> Report:
    keys = args.keys
    per_key = after["VmRSS"] / keys
    growth = (after["VmRSS"] - before["VmRSS"]) / keys
    node = "one node in memory" if durability == "memory" else "one durable node"
    if durability != "memory":
        node += f" (durability {durability})"
    lines = [
        f"memory: {keys} mv keys with {args.value_bytes}-byte values written to {node}; "
        "resident memory from /proc/PID/status with the node idle",
        "",
        _writes_row(load, args),
        row(
            "idle again after the writes",
            "-" if idle_after is None else f"{idle_after:.1f} s",
            "" if idle_after is not None else f"still busy after {IDLE_TIMEOUT:g} s; measured",
        ),
        row("VmRSS after start", _mib(before["VmRSS"]), _rss_parts(before)),
        row(f"VmRSS with {keys:,} keys", _mib(after["VmRSS"]), _rss_parts(after)),
        row("peak VmRSS (VmHWM)", _mib(after.get("VmHWM", 0))),
        row("bytes per key: VmRSS / keys", f"{per_key:,.0f}"),
        row("bytes per key: growth since start / keys", f"{growth:,.0f}"),
    ]
    figures: dict[str, Any] = {
        "write_seconds": load.seconds,
        "writes_per_s": load.ops_per_s,
        "idle_after_writes_s": idle_after,
        "before_bytes": before,
        "after_bytes": after,
        "rss_bytes_per_key": per_key,
        "rss_growth_bytes_per_key": growth,
    }
    params = {
        "keys": keys,
        "value_bytes": args.value_bytes,
        "connections": args.connections,
        "window": args.window,
        "sample": args.sample,
        "durability": durability,
    }
    targets = [
        Target(f"resident bytes per mv key at {keys:,} keys", per_key, MEMORY_PER_KEY_LIMIT, "B")
    ]
    return Report("memory", params, figures, lines, targets)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


def _rss_parts(memory: dict[str, int]) -> str:
    if "RssAnon" not in memory or "RssFile" not in memory:
        return ""
    return f"anonymous {_mib(memory['RssAnon'])}, file-backed {_mib(memory['RssFile'])}"


# -- resp ----------------------------------------------------------------------------------------

RESP_RATIO_LIMIT = 0.5  # issue 6: MVREG SET at least 0.5x redis-server SET (appendfsync always)
RESP_KEYSPACE = 100_000  # redis-benchmark -r: __rand_int__ is one of this many 12-digit numbers
RESP_SAMPLE = 1000
RESP_KEY_SHORTFALL = 0.97  # the node must hold at least this share of the expected distinct keys
REDIS_TOOLS = {"redis-benchmark": "redis-tools", "redis-server": "redis-server"}


@dataclass
class BenchmarkRun:
    """One redis-benchmark run against one server: its CSV row, and the server's CPU."""

    server: str  # "node" or "redis"
    figures: dict[str, float]
    cpu_cores: float | None

    @property
    def rps(self) -> float:
        return self.figures["rps"]


def redis_tools() -> dict[str, str]:
    """The paths of redis-benchmark and redis-server; a BenchError naming the packages if absent."""
    found = {name: shutil.which(name) for name in REDIS_TOOLS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        packages = " ".join(sorted({REDIS_TOOLS[name] for name in missing}))
        raise BenchError(
            f"{' and '.join(missing)} not found on PATH; resp needs redis-benchmark and "
            f"redis-server (on Debian: apt-get install {packages})"
        )
    return {name: path for name, path in found.items() if path is not None}


async def resp_ping(port: int) -> bool:
    """Whether a RESP server on `port` answers PING with PONG."""
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
    except OSError:
        return False
    try:
        writer.write(b"*1\r\n$4\r\nPING\r\n")
        return (await reader.readline()) == b"+PONG\r\n"
    except (OSError, ConnectionError):
        return False
    finally:
        writer.close()


async def start_redis(s: Session, binary: str) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server on a free loopback port that fsyncs its AOF on every write."""
    directory = s.directory / "redis-server"
    directory.mkdir()
    (port,) = free_ports(1)
    argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--appendonly", "yes"]
    argv += ["--appendfsync", "always", "--save", "", "--dir", str(directory)]
    argv += ["--daemonize", "no", "--logfile", ""]
    process = s.children.spawn(argv, cwd=directory, log=directory / "redis-server.log")
    deadline = time.monotonic() + START_TIMEOUT
    while not await resp_ping(port):
        if process.poll() is not None:
            raise BenchError(
                f"redis-server exited with code {process.returncode}: "
                f"{_tail(directory / 'redis-server.log')}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"redis-server not answering PING after {START_TIMEOUT}s")
        await asyncio.sleep(0.02)
    return process, port


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def parse_benchmark_csv(text: str) -> dict[str, float]:
    """The figures of redis-benchmark --csv: a quoted header line, then one row per test."""
    rows = [
        [cell.strip('"') for cell in line.strip().split('","')]
        for line in text.splitlines()
        if line.startswith('"')
    ]
    if len(rows) < 2 or rows[0][:2] != ["test", "rps"]:
        raise BenchError(f"no CSV figures in redis-benchmark's output: {text[-300:]!r}")
    header, last = rows[0], rows[-1]
    try:
        return {name: float(value) for name, value in zip(header[1:], last[1:], strict=True)}
    except ValueError:
        raise BenchError(f"unreadable redis-benchmark CSV row: {last}") from None


async def redis_benchmark(
    s: Session,
    args: argparse.Namespace,
    binary: str,
    server: str,
    port: int,
    command: Sequence[str],
    pid: int,
) -> BenchmarkRun:
    """Run redis-benchmark to its end (polled, so the deadline can cancel it)."""
    log = s.directory / f"redis-benchmark-{server}-{len(list(s.directory.glob('redis-b*')))}.log"
    argv = [binary, "-h", LOOPBACK, "-p", str(port), "-n", str(args.requests)]
    argv += ["-c", str(args.clients), "-P", str(args.pipeline), "-r", str(RESP_KEYSPACE)]
    argv += ["--csv", *command]
    cpu_before = process_cpu_seconds(pid)
    started = time.monotonic()
    process = s.children.spawn(argv, cwd=s.directory, log=log)
    while process.poll() is None:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    cpu_after = process_cpu_seconds(pid)
    output = log.read_text(errors="replace")
    if process.returncode != 0:
        raise BenchError(
            f"redis-benchmark against {server} exited {process.returncode}: {output!r:.300}"
        )
    figures = parse_benchmark_csv(output)
    if "rps" not in figures or figures["rps"] <= 0:
        raise BenchError(f"redis-benchmark against {server} measured no requests: {output!r:.300}")
    cores = None
    if cpu_before is not None and cpu_after is not None and elapsed > 0:
        cores = (cpu_after - cpu_before) / elapsed
    return BenchmarkRun(server, figures, cores)


async def resp_commands(port: int, commands: Sequence[Sequence[bytes]]) -> list[Any]:
    """Send every command pipelined on one connection; the parsed replies, in order."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port, limit=READ_LIMIT)
    try:
        out = bytearray()
        for command in commands:
            out += b"*%d\r\n" % len(command)
            for arg in command:
                out += b"$%d\r\n%s\r\n" % (len(arg), arg)
        writer.write(bytes(out))
        parser = hiredis.Reader()
        replies: list[Any] = []
        while len(replies) < len(commands):
            chunk = await reader.read(1 << 18)
            if not chunk:
                raise BenchError("the node closed a RESP connection")
            parser.feed(chunk)
            while (reply := parser.gets()) is not False:
                replies.append(reply)
        return replies
    finally:
        writer.close()


def expected_distinct(requests: int, keyspace: int) -> float:
    """How many distinct keys `requests` uniform draws from `keyspace` hit, on average."""
    return keyspace * (1 - (1 - 1 / keyspace) ** requests)


def resp_key_pattern(round_no: int) -> str:
    """Round `round_no`'s keys for redis-benchmark, a namespace of their own.

    redis-benchmark draws `__rand_int__` from `random()` seeded with
    `time(NULL) ^ getpid()`, so two runs whose second and pid differ in the
    same bits draw the same keys; in a shared namespace such a round would add
    no key and the check after it would fail.
    """
    return f"r{round_no}:key:__rand_int__"


async def check_resp_writes(
    s: Session, node: NodeHandle, round_no: int, requests: int
) -> list[str]:
    """Problems with what the benchmark wrote: sampled keys of round `round_no` must read back
    [v] over MVREG GET, and the node must hold about as many mv keys as `round_no` rounds of
    `requests` random SETs, each in its own namespace, reach."""
    assert node.resp_port is not None
    rng = random.Random(round_no)
    sample = rng.sample(range(RESP_KEYSPACE), RESP_SAMPLE)
    pattern = resp_key_pattern(round_no).encode()
    keys = [pattern.replace(b"__rand_int__", b"%012d" % i) for i in sample]
    replies = await resp_commands(node.resp_port, [[b"MVREG", b"GET", key] for key in keys])
    wrong = [
        f"{key.decode()}: {reply!r:.100}"
        for key, reply in zip(keys, replies, strict=True)
        if reply != [b"v"] and reply != []
    ]
    present = sum(reply == [b"v"] for reply in replies)
    stored = (await s.status())[node.id]["keys"]["mv"]
    per_round = expected_distinct(requests, RESP_KEYSPACE)
    expected = round_no * per_round
    problems = []
    if wrong:
        problems.append(f"{len(wrong)} of {len(keys)} sampled keys read back wrong: {wrong[0]}")
    if present < RESP_KEY_SHORTFALL * per_round / RESP_KEYSPACE * len(keys):
        problems.append(
            f"round {round_no}: only {present} of {len(keys)} sampled keys are set; about "
            f"{per_round / RESP_KEYSPACE * len(keys):.0f} expected"
        )
    if not RESP_KEY_SHORTFALL * expected <= stored <= round_no * RESP_KEYSPACE:
        problems.append(
            f"after round {round_no} the node holds {stored} mv keys; about {expected:.0f} expected"
        )
    return problems


async def run_resp(args: argparse.Namespace, s: Session) -> Report:
    """redis-benchmark against the node's RESP port and against redis-server, alternately."""
    tools = redis_tools()
    node = s.nodes[s.ids[0]]
    assert node.resp_port is not None and node.process is not None
    s.phase = "starting redis-server"
    redis_process, redis_port = await start_redis(s, tools["redis-server"])
    if not await resp_ping(node.resp_port):
        raise BenchError(f"{node.id} does not answer PING on its resp_port {node.resp_port}")
    runs: list[BenchmarkRun] = []
    problems: list[str] = []
    for round_no in range(1, args.rounds + 1):
        keys = resp_key_pattern(round_no)
        s.phase = f"round {round_no}: redis-benchmark MVREG SET against {node.id}"
        runs.append(
            await redis_benchmark(
                s,
                args,
                tools["redis-benchmark"],
                "node",
                node.resp_port,
                ["MVREG", "SET", keys, "v"],
                node.process.pid,
            )
        )
        s.check_alive()
        s.phase = f"round {round_no}: reading back a sample of the keys"
        problems += await check_resp_writes(s, node, round_no, args.requests)
        s.phase = f"round {round_no}: redis-benchmark SET against redis-server"
        runs.append(
            await redis_benchmark(
                s,
                args,
                tools["redis-benchmark"],
                "redis",
                redis_port,
                ["SET", keys, "v"],
                redis_process.pid,
            )
        )
        if redis_process.poll() is not None:
            raise BenchError(f"redis-server exited with code {redis_process.returncode}")
    durability = (await s.status())[node.id]["durability"]["mode"]
    report = resp_report(args, runs, durability)
    report.failure = "; ".join(problems)
    return report


def resp_report(args: argparse.Namespace, runs: list[BenchmarkRun], durability: str) -> Report:
    node_runs = [r for r in runs if r.server == "node"]
    redis_runs = [r for r in runs if r.server == "redis"]
    node_rps = sum(r.rps for r in node_runs) / len(node_runs)
    redis_rps = sum(r.rps for r in redis_runs) / len(redis_runs)
    mode = "in memory" if durability == "memory" else f"durable (durability {durability})"
    lines = [
        f"resp: redis-benchmark -n {args.requests} -c {args.clients} -P {args.pipeline} "
        f"-r {RESP_KEYSPACE}, alternately against one node {mode} (MVREG SET "
        f"r<round>:key:__rand_int__ v) and redis-server --appendonly yes --appendfsync always "
        f"(SET r<round>:key:__rand_int__ v); redis-benchmark shares the machine's CPUs with both",
        "",
        f"  {'round  server':<24}{'requests/s':>12}{'avg ms':>9}{'p50 ms':>9}"
        f"{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU':>7}",
    ]
    for i, run in enumerate(runs):
        f = run.figures

        def ms(name: str, f: dict[str, float] = f) -> str:
            return f"{f[name]:.3f}" if name in f else "-"

        cpu = f"{run.cpu_cores:.2f}" if run.cpu_cores is not None else "-"
        lines.append(
            f"  {i // 2 + 1:<7}{run.server:<17}{run.rps:>12,.0f}{ms('avg_latency_ms'):>9}"
            f"{ms('p50_latency_ms'):>9}{ms('p95_latency_ms'):>9}{ms('p99_latency_ms'):>9}"
            f"{ms('max_latency_ms'):>9}{cpu:>7}"
        )
    ratios = [n.rps / r.rps for n, r in zip(node_runs, redis_runs, strict=True)]
    lines += [
        "",
        row("node requests/s (mean of rounds)", f"{node_rps:,.0f}"),
        row("redis-server requests/s (mean of rounds)", f"{redis_rps:,.0f}"),
        row("node / redis-server, per round", " ".join(f"{x:.2f}" for x in ratios)),
    ]
    figures: dict[str, Any] = {
        "runs": [
            {"round": i // 2 + 1, "server": r.server, **r.figures, "server_cpu_cores": r.cpu_cores}
            for i, r in enumerate(runs)
        ],
        "node_rps": node_rps,
        "redis_rps": redis_rps,
        "ratio": node_rps / redis_rps,
        "round_ratios": ratios,
    }
    params = {
        "requests": args.requests,
        "clients": args.clients,
        "pipeline": args.pipeline,
        "keyspace": RESP_KEYSPACE,
        "rounds": args.rounds,
        "durability": durability,
    }
    targets = [
        Target(
            f"node MVREG SET / redis SET at pipeline {args.pipeline}",
            node_rps / redis_rps,
            RESP_RATIO_LIMIT,
            "x",
            at_least=True,
        )
    ]
    return Report("resp", params, figures, lines, targets)


# -- the command line ----------------------------------------------------------------------------

Runner = Callable[[argparse.Namespace, Session], Awaitable[Report]]


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nodes", type=_at_least(2), default=3, help="cluster size (default: 3)")
    common.add_argument(
        "--gossip-interval-ms",
        type=_at_least(1),
        default=200,
        metavar="MS",
        help="the nodes' gossip_interval_ms (default: 200)",
    )
    common.add_argument("--keyspace", choices=("mv",), default="mv", help="(default: mv)")
    common.add_argument(
        "--value-bytes",
        type=_at_least(1),
        default=16,
        metavar="N",
        help="length of each written value (default: 16)",
    )
    common.add_argument(
        "--connections",
        type=_at_least(1),
        default=16,
        metavar="N",
        help="client connections per written node (default: 16)",
    )
    common.add_argument(
        "--window",
        type=_at_least(1),
        default=64,
        metavar="N",
        help="requests in flight per connection (default: 64)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="the whole run's deadline in seconds (default: 120)",
    )
    common.add_argument(
        "--memory",
        action="store_true",
        help="nodes keep everything in memory (serve --memory) instead of in their data_dir",
    )
    common.add_argument(
        "--profile",
        metavar="DIR",
        help="sample every node with py-spy during the measured phase; folded stacks go "
        "to DIR and a summary is printed (the samplers slow the nodes down)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON object")
    return common


def _add_converge(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    converge = commands.add_parser(
        "converge",
        parents=[common],
        help="partition, write both sides, heal: time and bytes to converge",
        description="Cut n1 off, write the same keys at n1 and n2, heal, and measure "
        "the seconds and gossip bytes until every node holds every key with both siblings.",
    )
    converge.add_argument("--keys", type=_at_least(1), default=10_000, help="(default: 10000)")
    converge.set_defaults(run=run_converge)


def _single_node_options(parser: argparse.ArgumentParser, timeout: float) -> None:
    """What a one-node subcommand shares: value size, deadline, JSON; no cluster options."""
    parser.add_argument(
        "--value-bytes",
        type=_at_least(1),
        default=16,
        metavar="N",
        help="length of each written value (default: 16)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help=f"the whole run's deadline in seconds (default: {timeout:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(nodes=1, gossip_interval_ms=200, memory=False)


def _add_throughput(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    throughput = commands.add_parser(
        "throughput",
        help="one node under C connections x P requests in flight: ops/s and latency",
        description="Start one node and keep CONNECTIONS x IN_FLIGHT pre-encoded requests "
        "of the op mix in flight for SECONDS; report ops/s, p50/p99/p999 latency and "
        "error replies (any error fails the run). --both runs a durable and an in-memory node "
        "side by side, alternates their timed rounds (each while the other node idles) and "
        "holds mv_write to durable >= 0.8x in memory. --floor "
        "runs the same load against a bare uvloop + orjson server too, alternately with "
        "the node, and reports node / floor, holding a durable node to mv_write >= 0.40x "
        "and mv_read >= 0.50x the floor, p99 <= 10 ms and no errors. --depths sweeps the "
        "requests in flight per connection (targets are judged at IN_FLIGHT only) and "
        "--chart draws the sweep. The client runs in the benchmark's own process, on the "
        "same CPUs as the node.",
    )
    throughput.add_argument(
        "--connections", type=_at_least(1), default=16, metavar="C", help="(default: 16)"
    )
    throughput.add_argument(
        "--in-flight",
        type=_at_least(1),
        default=16,
        metavar="P",
        help="requests in flight per connection (default: 16)",
    )
    throughput.add_argument(
        "--seconds", type=float, default=5.0, metavar="D", help="per measured run (default: 5)"
    )
    throughput.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("mv_write"),
        metavar="OP[:W],...",
        help=f"ops with optional weights, of {', '.join(OPS)} (default: mv_write)",
    )
    throughput.add_argument(
        "--keys", type=_at_least(1), default=100_000, help="distinct keys (default: 100000)"
    )
    storage = throughput.add_mutually_exclusive_group()
    storage.add_argument(
        "--durable", action="store_true", help="the node keeps its data_dir (the default)"
    )
    storage.add_argument("--memory", action="store_true", help="the node runs with --memory")
    storage.add_argument(
        "--both",
        action="store_true",
        help="a durable and an in-memory node side by side, their rounds alternating",
    )
    throughput.add_argument(
        "--floor",
        action="store_true",
        help="also run the load against the floor, a bare uvloop + orjson server "
        "(scripts/bench_floor.py), floor and node alternately, and report node / floor",
    )
    throughput.add_argument(
        "--rounds",
        type=_at_least(1),
        metavar="R",
        help="timed runs per depth (default: 2 with --floor, each a floor run then a node "
        "run; 3 with --both, each a durable run then an in-memory run; 1 otherwise)",
    )
    throughput.add_argument(
        "--depths",
        type=parse_depths,
        metavar="P,P,...",
        help="a sweep: measure at each of these requests in flight per connection, e.g. "
        "1,4,16,64, instead of at IN_FLIGHT alone (targets are judged at IN_FLIGHT)",
    )
    throughput.add_argument(
        "--chart",
        metavar="FILE.png",
        help="draw ops/s and p99 latency against the depth into FILE.png (needs matplotlib: "
        f"{PLOT_INSTALL})",
    )
    _single_node_options(throughput, 600.0)
    throughput.set_defaults(run=run_throughput, check=_check_throughput)


def _check_throughput(args: argparse.Namespace) -> str | None:
    """What the options cannot express: a usage error before anything starts, or None."""
    if args.floor and args.both:
        return "--floor compares one node with the floor: give --durable or --memory, not --both"
    if args.chart and find_spec("matplotlib") is None:
        return f"--chart needs matplotlib, which is not installed: {PLOT_INSTALL}"
    return None


def _add_restart(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    restart = commands.add_parser(
        "restart",
        help="fill a durable node, SIGKILL it, time the restart to a correct read",
        description="Write KEYS mv keys to one durable node, kill it with SIGKILL, start it "
        "again and measure the time from the process start to a correct mv_read (target: "
        "under 10 s for 1,000,000 keys); then every sampled key must read back its value.",
    )
    _fill_options(restart, "random keys read back after the restart")
    _single_node_options(restart, 900.0)
    restart.set_defaults(run=run_restart)


def _fill_options(parser: argparse.ArgumentParser, sample_help: str) -> None:
    """What a subcommand that writes N keys and reads a sample back shares."""
    parser.add_argument("--keys", type=_at_least(1), default=1_000_000, help="(default: 1000000)")
    parser.add_argument(
        "--connections",
        type=_at_least(1),
        default=8,
        metavar="N",
        help="client connections writing the keys (default: 8)",
    )
    parser.add_argument(
        "--window",
        type=_at_least(1),
        default=64,
        metavar="N",
        help="writes in flight per connection (default: 64)",
    )
    parser.add_argument(
        "--sample",
        type=_at_least(1),
        default=1000,
        metavar="N",
        help=f"{sample_help} (default: 1000)",
    )


def _add_memory(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    memory = commands.add_parser(
        "memory",
        help="fill one node with N mv keys: its resident memory per key",
        description="Start one node (durable unless --memory), read its resident memory "
        "(VmRSS of /proc/PID/status) once it is idle, write KEYS mv keys, wait until it is "
        "idle again and read VmRSS again; report bytes per key, as VmRSS / KEYS (target: "
        "at most 400 at 1,000,000 keys with small values) and as the growth / KEYS, and "
        "the write rate. Every sampled key must read back its value.",
    )
    _fill_options(memory, "random keys read back after the writes")
    memory.add_argument(
        "--memory", action="store_true", help="the node runs with --memory (default: durable)"
    )
    _single_node_options(memory, 900.0)
    memory.set_defaults(run=run_memory)


def _add_resp(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    resp = commands.add_parser(
        "resp",
        help="redis-benchmark: MVREG SET on a node's RESP port against SET on redis-server",
        description="Start one node with a resp_port and a redis-server with appendfsync "
        "always, run redis-benchmark with MVREG SET r<R>:key:__rand_int__ v against the node "
        "and SET r<R>:key:__rand_int__ v against redis-server, alternately (R the round), "
        "and hold the node to at least 0.5x redis-server's requests/s. Needs "
        "redis-benchmark and redis-server on PATH (Debian: redis-tools, redis-server).",
    )
    resp.add_argument(
        "--requests",
        type=_at_least(1),
        default=200_000,
        metavar="N",
        help="requests per redis-benchmark run (default: 200000)",
    )
    resp.add_argument("--clients", type=_at_least(1), default=16, metavar="C", help="(default: 16)")
    resp.add_argument(
        "--pipeline",
        type=_at_least(1),
        default=16,
        metavar="P",
        help="requests pipelined per client (default: 16)",
    )
    resp.add_argument(
        "--rounds",
        type=_at_least(1),
        default=2,
        metavar="R",
        help="node then redis-server, R times (default: 2)",
    )
    resp.add_argument(
        "--memory", action="store_true", help="the node runs with --memory (default: durable)"
    )
    resp.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="S",
        help="the whole run's deadline in seconds (default: 300)",
    )
    resp.add_argument("--json", action="store_true", help="print one JSON object")
    resp.set_defaults(run=run_resp, nodes=1, gossip_interval_ms=200, resp=True)


SUBCOMMANDS = (_add_converge, _add_throughput, _add_restart, _add_memory, _add_resp)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description=__doc__.split("\n\n")[0],
        epilog="Exit status: 0 every target met, 1 a target missed, 3 the run failed.",
    )
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    common = _common_options()
    for add in SUBCOMMANDS:
        add(commands, common)
    return parser


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


async def _run(args: argparse.Namespace, children: Children, directory: Path) -> Report:
    """The subcommand under the global deadline, naming the phase it was in if it passes."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    s = Session(
        directory,
        children,
        args.nodes,
        args.gossip_interval_ms,
        memory=args.memory,
        resp=getattr(args, "resp", False),
    )
    run: Runner = args.run
    try:
        async with asyncio.timeout(args.timeout), running(s):
            return await run(args, s)
    except TimeoutError:
        raise BenchError(f"no result within the {args.timeout:g} s deadline ({s.phase})") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = args.check(args) if hasattr(args, "check") else None
    if problem:
        parser.error(problem)
    if find_spec("replica") is None:
        print(f"{sys.executable} cannot import replica; use .venv/bin/python", file=sys.stderr)
        return EXIT_FAILED
    host = machine()
    children = Children()
    try:
        with tempfile.TemporaryDirectory(prefix="replica-bench-") as directory:
            try:
                report = uvloop.run(_run(args, children, Path(directory)))
            finally:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the (bounded) cleanup finish
                children.stop_all()
    except BenchError as exc:
        print(f"bench {args.command} failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the run
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug in the benchmark itself: show it, but never as a target miss
        traceback.print_exc()
        return EXIT_FAILED
    report.machine = host
    print(report.to_json().decode() if args.json else report.to_text())
    if report.failure:
        return EXIT_FAILED
    return EXIT_PASS if all(t.passed for t in report.targets) else EXIT_MISS


if __name__ == "__main__":
    sys.exit(main())
