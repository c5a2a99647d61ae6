#!/usr/bin/env python3
"""The project's benchmark: real node processes on loopback, measured from outside.

    .venv/bin/python scripts/bench.py converge [--keys 10000] [--nodes 3]
        [--gossip-interval-ms 200] [--keyspace mv] [--value-bytes 16] [--json]
        [--memory] [--connections 16] [--window 64] [--timeout 120] [--profile DIR]

`converge` cuts n1 off from the other nodes, writes the same keys once on each
side (so every key ends with two siblings), heals the partition, and measures
how long the nodes take to agree again and how many gossip bytes that costs
per key, against the targets: 10,000 divergent keys converge within 2 s of the
heal, and gossip costs at most twice each key's serialized state.

Every subcommand runs in a `Session`: a temporary directory, N `replica serve`
processes whose peer links all pass through TCP proxies (scripts/bench_proxy.py,
a process of its own) so that links can be cut and healed without touching the
nodes, and clients that keep many requests in flight.  The nodes are judged
only by what they answer (`status`, reads) and by what crosses the proxies, so
the benchmark measures the server as deployed.  Everything is stopped and
removed on exit, on error, on Ctrl-C and when the global deadline passes.

A new subcommand is one `_add_<name>` function declaring its options (the
common ones come from `_common_options`) and one `run_<name>(args, session)`
coroutine returning a `Report`.

Exit status: 0 every target met, 1 a target missed, 3 the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

try:
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
    process: subprocess.Popen[bytes] | None = None
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
    ) -> None:
        self.directory = directory
        self.children = children
        self.gossip_ms = gossip_ms
        self.memory = memory
        ids = [f"n{i}" for i in range(1, node_count + 1)]
        self.links = [link_name(a, b) for a in ids for b in ids if a != b]
        ports = free_ports(len(ids) + len(self.links))
        self.nodes = {
            node_id: NodeHandle(node_id, port, directory / node_id)
            for node_id, port in zip(ids, ports, strict=False)
        }
        self.proxy_ports = dict(zip(self.links, ports[len(ids) :], strict=True))
        self.proxy: ProxyControl | None = None
        self.phase = "starting"
        self.latency: dict[str, tuple[float, float]] = {}  # node → (asked at, seconds)

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    # -- start and stop

    async def start(self) -> None:
        """Proxies (all cut), then nodes; heal every link once all nodes listen."""
        self._start_proxy()
        for node in self.nodes.values():
            self._start_node(node)
        await asyncio.gather(*(self._wait_listening(node) for node in self.nodes.values()))
        for node in self.nodes.values():
            node.control = await Connection.open(node.port, node.id)
        await self.heal(self.links)
        await self.wait_links(lambda a, b: True)

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
        argv += ["--node", node.id, "--log-level", "warning"]
        if self.memory:
            argv.append("--memory")
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
                "",
            ]
        return "\n".join(lines)

    async def _wait_listening(self, node: NodeHandle) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check_alive()
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, node.port)
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"{node.id} not listening after {START_TIMEOUT}s") from None
                await asyncio.sleep(0.02)
            else:
                writer.close()
                return

    def check_alive(self) -> None:
        for node in self.nodes.values():
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

    @property
    def passed(self) -> bool:
        return self.measured <= self.limit


@dataclass
class Report:
    """What a subcommand measured: JSON-ready figures, text lines, targets."""

    command: str
    params: dict[str, Any]
    figures: dict[str, Any]
    lines: list[str]
    targets: list[Target]
    machine: dict[str, Any] = field(default_factory=dict)  # taken before the run started

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "command": self.command,
                "machine": self.machine,
                "params": self.params,
                "figures": self.figures,
                "targets": [
                    {
                        "name": t.name,
                        "measured": t.measured,
                        "limit": t.limit,
                        "unit": t.unit,
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
            out.append(f"{t.name:<46}{t.measured:>10.2f}{t.limit:>10.2f}  {result}  ({t.unit})")
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


SUBCOMMANDS = (_add_converge,)  # throughput, memory and resp come here, one function each


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
    s = Session(directory, children, args.nodes, args.gossip_interval_ms, memory=args.memory)
    run: Runner = args.run
    try:
        async with asyncio.timeout(args.timeout), running(s):
            return await run(args, s)
    except TimeoutError:
        raise BenchError(f"no result within the {args.timeout:g} s deadline ({s.phase})") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
    return EXIT_PASS if all(t.passed for t in report.targets) else EXIT_MISS


if __name__ == "__main__":
    sys.exit(main())
