"""Real node processes and a JSON line client, for tests over real TCP.

Nodes run as `python -m replica serve` in their own process group, with
stderr captured to a file so a failing test can show what the node logged.
Waiting is always for a condition with a deadline (the port accepts, the
reply arrives), never a fixed sleep; every process is stopped, and killed if
it will not stop, even when the test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pprint
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from tests.proxy import LinkProxy, Partitioner

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0
READ_LIMIT = 64 << 20  # the client reads replies of any size the tests produce

T = TypeVar("T")


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def write_cluster(
    directory: Path,
    node_ids: Iterable[str] = ("n1",),
    *,
    ports: Iterable[int] | None = None,
    resp_ports: dict[str, int] | None = None,
    **cluster: int,
) -> Path:
    """A cluster.toml in `directory` for `node_ids` on loopback; returns its path.

    `resp_ports` gives the nodes it names a Redis-protocol port.
    """
    ids = list(node_ids)
    port_list = list(ports) if ports is not None else free_ports(len(ids))
    nodes = list(zip(ids, port_list, strict=True))
    return write_cluster_view(directory / "cluster.toml", nodes, resp_ports, **cluster)


def replica_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "replica", *args]


class NodeProcess:
    """One `replica serve` child process."""

    def __init__(
        self,
        config: Path,
        node_id: str,
        host: str,
        port: int,
        *,
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`extra_args` go to every `replica serve` this starts (`--salvage`, say)."""
        self.config = config
        self.node_id = node_id
        self.host = host
        self.port = port
        self.log_level = log_level
        self.extra_args = extra_args
        self.stderr_path = config.parent / f"{node_id}.stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *extra: str) -> NodeProcess:
        """Start `replica serve`, with `extra` arguments this time only."""
        command = replica_command(
            "serve", "--config", str(self.config), "--node", self.node_id,
            "--log-level", self.log_level, *self.extra_args, *extra,
        )  # fmt: skip
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                command,
                cwd=self.config.parent,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT, port: int | None = None) -> None:
        """Return once the node accepts connections; fail with its log if it never does.

        On its JSON port, or on `port` (a RESP port listens a moment after the JSON one).
        """
        assert self.process is not None
        port = self.port if port is None else port
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.node_id} exited with {self.process.returncode}:\n{self.stderr_text()}"
                )
            try:
                with socket.create_connection((self.host, port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.node_id} not accepting on {self.host}:{port} "
                        f"after {timeout}s:\n{self.stderr_text()}"
                    ) from None
                time.sleep(0.02)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL to the whole group if it does not exit in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout)
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def rss_bytes(self) -> int:
        """Resident memory now, from /proc (Linux)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    async def connect(self) -> JsonClient:
        return await JsonClient.connect(self.host, self.port)


@contextlib.contextmanager
def running_cluster(
    directory: Path, node_ids: Iterable[str] = ("n1",), **cluster: int
) -> Iterator[dict[str, NodeProcess]]:
    """Every node of a fresh cluster file, started and ready; all stopped on exit."""
    ids = list(node_ids)
    ports = free_ports(len(ids))
    config = write_cluster(directory, ids, ports=ports, **cluster)
    nodes = {
        node_id: NodeProcess(config, node_id, LOOPBACK, port)
        for node_id, port in zip(ids, ports, strict=True)
    }
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_ready()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()


class JsonClient:
    """A newline-delimited JSON client: one request at a time, or raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_msg_id = 1
        self.unmatched: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, host: str, port: int, timeout: float = REPLY_TIMEOUT) -> JsonClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=READ_LIMIT), timeout
        )
        return cls(reader, writer)

    async def __aenter__(self) -> JsonClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def take_msg_id(self) -> int:
        msg_id = self.next_msg_id
        self.next_msg_id += 1
        return msg_id

    async def request(self, body: dict[str, Any], timeout: float = REPLY_TIMEOUT) -> dict[str, Any]:
        """Send a bare body (numbered unless it has a msg_id); return the reply body."""
        body = {**body}
        body.setdefault("msg_id", self.take_msg_id())
        await self.send(body)
        return await self.reply_to(body["msg_id"], timeout)

    async def envelope_request(
        self,
        body: dict[str, Any],
        src: str = "c1",
        dest: str = "n1",
        timeout: float = REPLY_TIMEOUT,
    ) -> dict[str, Any]:
        """Send `body` in the envelope form; return the whole reply message."""
        body = {**body}
        body.setdefault("msg_id", self.take_msg_id())
        await self.send({"src": src, "dest": dest, "body": body})
        return await self.reply_to(body["msg_id"], timeout, envelope=True)

    async def reply_to(
        self, msg_id: int, timeout: float = REPLY_TIMEOUT, *, envelope: bool = False
    ) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                message = await self.read_json(timeout=None)
                body = message.get("body", message) if envelope else message
                if isinstance(body, dict) and body.get("in_reply_to") == msg_id:
                    return message
                self.unmatched.append(message)

        return await asyncio.wait_for(wait(), timeout)

    async def send(self, message: Any) -> None:
        await self.send_raw(orjson.dumps(message) + b"\n")

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_line(self, timeout: float | None = REPLY_TIMEOUT) -> bytes:
        """The next line without its newline; b"" once the node closed the connection."""
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        return line.rstrip(b"\n")

    async def read_json(self, timeout: float | None = REPLY_TIMEOUT) -> dict[str, Any]:
        line = await self.read_line(timeout)
        if not line:
            raise ConnectionError("connection closed by the node")
        message = orjson.loads(line)
        assert isinstance(message, dict), line
        return message

    async def closed_by_peer(self, timeout: float = REPLY_TIMEOUT) -> bool:
        """Whether the node closes the connection (EOF or reset) within `timeout`."""
        try:
            rest = await asyncio.wait_for(self.reader.read(), timeout)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return rest == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


# -- clusters whose nodes reach each other only through link proxies ------------------------

CONVERGE_TIMEOUT = 15.0
POLL_INTERVAL = 0.05
DEFAULT_EPHEMERAL_LOW = 32768


def free_listen_ports(count: int) -> list[int]:
    """`count` free loopback ports below the kernel's ephemeral range.

    A proxy that is cut closes its listening socket and must bind the same
    port again when it heals; a port from the ephemeral range could meanwhile
    become the local end of some outgoing connection and make that bind fail.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = DEFAULT_EPHEMERAL_LOW
    rng = random.Random()
    ports: list[int] = []
    attempts = 0
    while len(ports) < count:
        attempts += 1
        if attempts > 10_000:
            raise RuntimeError(f"no {count} free ports below {low}")
        port = rng.randrange(10_000, low)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        ports.append(port)
    return ports


def _resp_port_line(resp_ports: dict[str, int] | None, node_id: str) -> list[str]:
    if resp_ports is None or node_id not in resp_ports:
        return []
    return [f"resp_port = {resp_ports[node_id]}"]


def write_cluster_view(
    path: Path,
    nodes: Iterable[tuple[str, int]],
    resp_ports: dict[str, int] | None = None,
    **cluster: int,
) -> Path:
    """A cluster file at `path` listing `(node_id, port)` in order, on loopback."""
    lines = ["[cluster]", *(f"{name} = {value}" for name, value in cluster.items()), ""]
    for node_id, port in nodes:
        lines += [
            "[[nodes]]",
            f'id = "{node_id}"',
            f'host = "{LOOPBACK}"',
            f"port = {port}",
            f'data_dir = "data/{node_id}"',
            *_resp_port_line(resp_ports, node_id),
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def wait_unlocked(data_dir: Path, timeout: float = 20.0) -> None:
    """Until no process holds `data_dir`'s lock, before the dir is wiped.

    A killed node's log writer exits a moment after its node and may still
    be writing into the dir; a restarted node waits for it, but a wipe
    would not.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(data_dir / "replica.lock", os.O_RDWR)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            assert time.monotonic() < deadline, f"{data_dir} still locked after {timeout}s"
        finally:
            os.close(fd)
        time.sleep(0.02)


def without_ids(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply body without `msg_id` and `in_reply_to`: what replicas can agree on."""
    return {k: v for k, v in reply.items() if k not in ("msg_id", "in_reply_to")}


async def eventually(
    observe: Callable[[], Awaitable[T]],
    holds: Callable[[T], bool],
    what: str,
    timeout: float = CONVERGE_TIMEOUT,
) -> T:
    """Poll `observe` until `holds` accepts what it saw; fail showing the last observation."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await observe()
        if holds(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout}s; last observed:\n{pprint.pformat(seen)}"
            )
        await asyncio.sleep(POLL_INTERVAL)


class ProxiedCluster:
    """Running nodes whose every directed link X→Y passes through its own `LinkProxy`.

    Node X reads its own cluster file, `X.toml`, which lists X at its real
    port and every other node Y at the port of the proxy P(X→Y).  Clients
    talk to the real ports, so cutting links never cuts a client off.
    """

    def __init__(
        self,
        directory: Path,
        node_ids: list[str],
        ports: dict[str, int],
        proxies: dict[tuple[str, str], LinkProxy],
        cluster: dict[str, int],
    ) -> None:
        self.directory = directory
        self.node_ids = node_ids
        self.ports = ports
        self.partitioner = Partitioner(proxies)
        self.nodes: dict[str, NodeProcess] = {}
        self._clients: dict[str, JsonClient] = {}
        for node_id in node_ids:
            view = [
                (other, ports[other] if other == node_id else proxies[node_id, other].listen_port)
                for other in node_ids
            ]
            config = write_cluster_view(directory / f"{node_id}.toml", view, **cluster)
            self.nodes[node_id] = NodeProcess(config, node_id, LOOPBACK, ports[node_id])

    @property
    def proxies(self) -> dict[tuple[str, str], LinkProxy]:
        return self.partitioner.proxies

    async def start(self) -> None:
        for proxy in self.proxies.values():
            await proxy.start()
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            await node_ready(node)

    async def partition(self, groups: Iterable[Iterable[str]]) -> None:
        await self.partitioner.partition([set(g) for g in groups])

    async def heal_all(self) -> None:
        await self.partitioner.heal_all()

    async def client(self, node_id: str) -> JsonClient:
        """A connection to the node's real port, kept for later requests."""
        client = self._clients.get(node_id)
        if client is None:
            client = await self.nodes[node_id].connect()
            self._clients[node_id] = client
        return client

    async def request(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        client = await self.client(node_id)
        return await client.request(body)

    async def request_each(
        self, body: dict[str, Any], node_ids: Iterable[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """The same request at every node (or those named): reply bodies without ids."""
        ids = self.node_ids if node_ids is None else list(node_ids)
        return {n: without_ids(await self.request(n, body)) for n in ids}

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return await self.request_each({"type": "status"})

    async def kill(self, node_id: str) -> None:
        """SIGKILL the node: no shutdown of any kind."""
        await self._drop_client(node_id)
        await asyncio.to_thread(self.nodes[node_id].kill)

    async def restart(self, node_id: str, *, wipe: bool = True) -> None:
        """Start a stopped or killed node again, with its data dir removed when `wipe`."""
        node = self.nodes[node_id]
        if node.process is not None and node.process.poll() is None:
            raise RuntimeError(f"{node_id} is still running")
        if wipe:
            data_dir = self.directory / "data" / node_id
            await asyncio.to_thread(wait_unlocked, data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
        node.start()
        await node_ready(node)

    async def wait_quiet(self, what: str = "every link up, nothing pending") -> None:
        """Every node connected to every peer, with no change pending for any of them."""

        def quiet(statuses: dict[str, dict[str, Any]]) -> bool:
            return all(
                peer["connected"] and peer["pending"] == 0
                for status in statuses.values()
                for peer in status["peers"]
            )

        await eventually(self.statuses, quiet, what)

    async def _drop_client(self, node_id: str) -> None:
        client = self._clients.pop(node_id, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        for node_id in list(self._clients):
            await self._drop_client(node_id)
        for node in self.nodes.values():
            await asyncio.to_thread(node.stop)
        await self.partitioner.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.node_id} (port {n.port}) log ---\n{n.stderr_text()}"
            for n in self.nodes.values()
        )


async def node_ready(node: NodeProcess, timeout: float = START_TIMEOUT) -> None:
    """Wait, without blocking the event loop, until the node accepts connections."""
    assert node.process is not None
    deadline = time.monotonic() + timeout
    while True:
        if node.process.poll() is not None:
            raise RuntimeError(
                f"{node.node_id} exited with {node.process.returncode}:\n{node.stderr_text()}"
            )
        try:
            _, writer = await asyncio.open_connection(node.host, node.port)
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{node.node_id} not accepting on {node.host}:{node.port} "
                    f"after {timeout}s:\n{node.stderr_text()}"
                ) from None
            await asyncio.sleep(0.02)
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return


@contextlib.asynccontextmanager
async def proxied_cluster(
    node_ids: Iterable[str] = ("n1", "n2", "n3"),
    *,
    gossip_interval_ms: int = 50,
    **cluster: int,
) -> AsyncIterator[ProxiedCluster]:
    """A fresh cluster with a proxy on every directed link, in its own temporary directory.

    Every node, proxy and file is gone on exit, whatever happened; the nodes'
    logs are printed, which pytest shows for a failed test.
    """
    ids = list(node_ids)
    links = [(a, b) for a in ids for b in ids if a != b]
    ports = free_listen_ports(len(ids) + len(links))
    node_ports = dict(zip(ids, ports[: len(ids)], strict=True))
    proxies = {
        link: LinkProxy(port, node_ports[link[1]])
        for link, port in zip(links, ports[len(ids) :], strict=True)
    }
    settings = {"gossip_interval_ms": gossip_interval_ms, **cluster}
    with tempfile.TemporaryDirectory(prefix="replica-cluster-") as name:
        running = ProxiedCluster(Path(name), ids, node_ports, proxies, settings)
        try:
            await running.start()
            yield running
        finally:
            await running.close()
            print(running.logs())
