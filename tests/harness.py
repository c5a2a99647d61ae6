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
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0
READ_LIMIT = 64 << 20  # the client reads replies of any size the tests produce


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
    **cluster: int,
) -> Path:
    """A cluster.toml in `directory` for `node_ids` on loopback; returns its path."""
    ids = list(node_ids)
    port_list = list(ports) if ports is not None else free_ports(len(ids))
    lines = ["[cluster]", *(f"{name} = {value}" for name, value in cluster.items()), ""]
    for node_id, port in zip(ids, port_list, strict=True):
        lines += [
            "[[nodes]]",
            f'id = "{node_id}"',
            f'host = "{LOOPBACK}"',
            f"port = {port}",
            f'data_dir = "data/{node_id}"',
            "",
        ]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines))
    return path


def replica_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "replica", *args]


class NodeProcess:
    """One `replica serve` child process."""

    def __init__(
        self, config: Path, node_id: str, host: str, port: int, *, log_level: str = "info"
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.host = host
        self.port = port
        self.log_level = log_level
        self.stderr_path = config.parent / f"{node_id}.stderr.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> NodeProcess:
        command = replica_command(
            "serve", "--config", str(self.config), "--node", self.node_id,
            "--log-level", self.log_level,
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

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Return once the node accepts connections; fail with its log if it never does."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.node_id} exited with {self.process.returncode}:\n{self.stderr_text()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{self.node_id} not accepting on {self.host}:{self.port} "
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
