"""A running cluster: N `replica serve` processes whose peer links pass through proxies.

Built on the testing kit (`replica.testing`): each node is a `NodeProcess`
with its own cluster file from `write_cluster_view`, and the proxies
(scripts/bench_proxy.py, the kit's `LinkProxy` in a process of their own; none
for a single node) let links be cut and healed without touching the nodes.  The
nodes are judged only by what they answer (`status`, reads) and by what
crosses the proxies, so the benchmark measures the server as deployed.
A session of zero nodes starts nothing: a scenario that starts its own
sessions (`compare`) is given one.  With `tls` its nodes serve TLS with
certificates minted for them (`replica.testing.certificates`) and mutual TLS
between them, and the session's clients speak TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from replica.testing import certificates
from replica.testing.cluster_file import add_tls, write_cluster_view
from replica.testing.ports import LOOPBACK, free_listen_ports, free_ports
from replica.testing.process import NodeProcess

from .clients import Connection
from .machine import process_cpu_seconds
from .processes import Children, log_tail
from .report import BenchError, Body

SCRIPTS = Path(__file__).resolve().parent.parent
PROXY_SCRIPT = SCRIPTS / "bench_proxy.py"
FLOOR_SCRIPT = SCRIPTS / "bench_floor.py"
POLL_SECONDS = 0.02  # status polling period: the resolution of every measured time
START_TIMEOUT = 20.0
IDLE_CPU = 0.05  # cores: a process using less than this is idle
IDLE_INTERVAL = 0.5  # seconds per CPU reading; two idle readings in a row make a process idle
IDLE_TIMEOUT = 60.0

LinkStats = dict[str, Any]
"""One link's tallies: {"sent"|"replies": {type: [lines, bytes, first, last]}, "accepted": [t]}."""


def link_name(src: str, dest: str) -> str:
    """The directed peer link on which `src` sends to `dest` (and reads its answers)."""
    return f"{src}>{dest}"


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

    async def reset(self) -> None:
        await self.command("reset")

    async def stats(self) -> dict[str, LinkStats]:
        return (await self.command("stats"))["stats"]


@dataclass(frozen=True)
class Variant:
    """The code a node runs and how it is started.

    `src` is a checkout whose `replica` package the node runs (put first on
    its PYTHONPATH, which the durable helpers it starts inherit); None runs
    the package this Python imports.  `env` is added to the node's
    environment and `serve_args` to its `replica serve` command line.
    """

    label: str = "current"
    src: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    serve_args: tuple[str, ...] = ()

    def overrides(self) -> dict[str, str]:
        """What this variant changes in the environment it is started in."""
        env = {}
        if self.src is not None:
            inherited = os.environ.get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join(
                [str(self.src), *([inherited] if inherited else [])]
            )
        return {**env, **self.env}

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.overrides()}

    def replica_file(self, cwd: Path) -> str:
        """The `replica/__init__.py` a node of this variant imports, asked of Python itself."""
        argv = [sys.executable, "-c", "import replica; print(replica.__file__)"]
        done = subprocess.run(
            argv, cwd=cwd, env=self.environment(), capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise BenchError(f"{self.label} cannot import replica: {done.stderr.strip()[-300:]}")
        return done.stdout.strip()


CURRENT = Variant()


@dataclass
class NodeHandle:
    """A server the benchmark started: a node, or another server measured like one.

    A node runs as the kit's `NodeProcess` (`runner`); another server (the
    floor, redis-server) as a plain child process (`other`).
    """

    id: str
    port: int
    directory: Path
    resp_port: int | None = None  # its Redis-protocol port, when the session asked for one
    runner: NodeProcess | None = None
    other: subprocess.Popen[bytes] | None = None
    spawned_at: float = 0.0  # time.monotonic() just before its process was started
    control: Connection | None = None  # status polls only, never shared with pipelines
    pool: list[Connection] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # how clients reach a node serving TLS
    tls_files: dict[str, str] = field(default_factory=dict)  # its [tls] table, absolute paths

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.runner.process if self.runner is not None else self.other

    @property
    def log(self) -> Path:
        return self.runner.stderr_path if self.runner is not None else self.directory / "server.log"


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
        variant: Variant = CURRENT,
        tls: bool = False,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.id_prefix = id_prefix
        self.children = children
        self.gossip_ms = gossip_ms
        self.memory = memory
        self.variant = variant
        self.log_level = "warning"
        # n1, n2, ...: another session in the same directory takes another prefix
        ids = [f"{id_prefix}{i}" for i in range(1, node_count + 1)]
        self.links = [link_name(a, b) for a in ids for b in ids if a != b]
        ports = free_ports(2 * len(ids) if resp else len(ids))
        self.nodes = {
            node_id: NodeHandle(
                node_id,
                ports[i],
                directory / node_id,
                resp_port=ports[len(ids) + i] if resp else None,
            )
            for i, node_id in enumerate(ids)
        }
        # a cut proxy binds its port again when it heals: keep it out of the ephemeral range
        self.proxy_ports = dict(zip(self.links, free_listen_ports(len(self.links)), strict=True))
        self.proxy: ProxyControl | None = None
        self.phase = "starting"
        self.latency: dict[str, tuple[float, float]] = {}  # node → (asked at, seconds)

    @property
    def ids(self) -> list[str]:
        return list(self.nodes)

    @property
    def first(self) -> NodeHandle:
        return self.nodes[self.ids[0]]

    # -- start and stop

    async def start(self) -> None:
        """Proxies (all cut), then nodes; heal every link once all nodes listen.

        A single node has no links, hence no proxy process either.
        """
        if self.tls:
            self._mint()
        if self.links:
            self._start_proxy()
        for node in self.nodes.values():
            self._start_node(node)
        await asyncio.gather(*(self._node_ready(node) for node in self.nodes.values()))
        for node in self.nodes.values():
            node.control = await Connection.open(node.port, node.id, node.tls)
        if self.links:
            await self.heal(self.links)
            await self.wait_links(lambda a, b: True)

    async def stop_node(self, node_id: str, *, crash: bool = False) -> None:
        """Close the node's clients and stop its process; with `crash`, kill -9 it."""
        node = self.nodes[node_id]
        await self._close_clients(node)
        if node.runner is not None:
            await asyncio.to_thread(node.runner.kill if crash else node.runner.stop)

    def start_node(self, node_id: str) -> NodeHandle:
        """Start a stopped node again, as `memory` and `log_level` now say; does not wait."""
        node = self.nodes[node_id]
        self._start_node(node)
        return node

    async def wait_ready(self, node_id: str) -> None:
        """Until the node listens; then open its status connection."""
        node = self.nodes[node_id]
        await self._node_ready(node)
        node.control = await Connection.open(node.port, node.id, node.tls)

    async def start_floor(self) -> NodeHandle:
        """The floor server (scripts/bench_floor.py) on a free port, listening; not a node."""
        (port,) = free_ports(1)
        floor = NodeHandle("floor", port, self.directory / "floor")
        floor.directory.mkdir()
        argv = [sys.executable, str(FLOOR_SCRIPT), "--port", str(port)]
        floor.spawned_at = time.monotonic()
        floor.other = self.children.spawn(argv, cwd=floor.directory, log=floor.log)
        await self._wait_listening(floor)
        return floor

    def _mint(self) -> None:
        """A CA and a certificate per node, in a directory of the session's own."""
        where = self.directory / f"tls-{self.id_prefix}"
        where.mkdir(exist_ok=True)
        for node_id, table in certificates.mint(where, self.nodes).items():
            node = self.nodes[node_id]
            node.tls_files = {name: str(where / file) for name, file in table.items()}
            node.tls = ssl.create_default_context(cafile=node.tls_files["ca_file"])

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
        """A fresh `NodeProcess` each time, so a restart runs as `memory` and `log_level` say."""
        node.directory.mkdir(parents=True, exist_ok=True)
        node.runner = NodeProcess(
            self._cluster_file(node),
            node.id,
            LOOPBACK,
            node.port,
            log_level=self.log_level,
            extra_args=self.variant.serve_args,
            memory=self.memory,
            env=self.variant.overrides(),
            resp_port=node.resp_port,
        )
        node.spawned_at = time.monotonic()
        self.children.start_node(node.runner)

    def _cluster_file(self, me: NodeHandle) -> Path:
        """`me` at its real port; every peer at the port of the proxy on the link to it."""
        view = [
            (node.id, node.port if node is me else self.proxy_ports[link_name(me.id, node.id)])
            for node in self.nodes.values()
        ]
        resp_ports = {n.id: n.resp_port for n in self.nodes.values() if n.resp_port is not None}
        path = write_cluster_view(
            me.directory / "cluster.toml",
            view,
            resp_ports or None,
            gossip_interval_ms=self.gossip_ms,
        )
        if me.tls_files:
            add_tls(path, me.tls_files)
        return path

    async def _node_ready(self, node: NodeHandle) -> None:
        assert node.runner is not None
        try:
            await node.runner.ready(START_TIMEOUT)
        except (RuntimeError, TimeoutError) as exc:
            raise BenchError(str(exc).splitlines()[0]) from None

    async def _wait_listening(self, node: NodeHandle) -> None:
        """Until a server that is not a node (the floor) accepts connections."""
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
            await self._close_clients(node)

    @staticmethod
    async def _close_clients(node: NodeHandle) -> None:
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
            node.pool.append(await Connection.open(node.port, node_id, node.tls))
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
        await self.proxy.command("cut", links)

    async def heal(self, links: Iterable[str]) -> None:
        assert self.proxy is not None
        await self.proxy.command("heal", links)

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
            tail = log_tail(node.log)
            if tail:
                print(f"--- last lines of {node.id}'s log ---\n{tail}", file=sys.stderr)
        raise
    finally:
        await s.close()


async def wait_idle(
    s: Session,
    node: NodeHandle,
    timeout: float = IDLE_TIMEOUT,
    cpu_seconds: Callable[[int], float | None] = process_cpu_seconds,
) -> float | None:
    """Until the server's CPU stays under IDLE_CPU for two readings; the seconds that took.

    None when it never did within `timeout` (the figures are then taken anyway).
    `cpu_seconds` says what counts as its CPU: its process alone, or with its
    children (`machine.tree_cpu_seconds`).
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
