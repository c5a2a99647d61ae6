"""The faults of `replica cluster up --faults`: a proxy on every peer link, and their control.

`running_faults` starts one `LinkProxy` per directed link X→Y on a free
loopback port P(X→Y) and yields, for each node, the `replica serve` options
that make it dial each peer Y at P(X→Y) (`--peer-address Y=127.0.0.1:P`).
Overriding the dial address keeps one cluster file for everything: the
nodes read their settings and data dirs from it as without `--faults`,
clients reach every node at its real port, and there is no per-node copy of
the file to keep in step.  It then serves the fault control endpoint (the
protocol is in `fault_requests`) on an ephemeral loopback port and writes
its address to the state file (`fault_state_file`); on exit the endpoint
closes, every proxy closes and the state file is removed.

The endpoint runs on the supervisor's event loop beside the proxies, so
nothing a control client does may hold that loop: only loopback peers are
served, at most MAX_CLIENTS at a time, a request line is at most
MAX_LINE_BYTES, a client silent for IDLE_SECONDS, not reading its replies
for WRITE_SECONDS or without the token is dropped, and one request acts on
the proxies at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from replica.cli.config import ClusterConfig, ConfigError
from replica.cli.fault_requests import (
    CRASH,
    MALFORMED,
    NOT_AUTHORISED,
    TEMPORARILY_UNAVAILABLE,
    FaultRequest,
    FaultRequestError,
    all_links,
    check_request,
)
from replica.cli.fault_state_file import FaultEndpoint, remove_state_file, write_state_file
from replica.testing.ports import LOOPBACK, free_listen_ports
from replica.testing.proxy import LinkProxy, Partitioner

log = logging.getLogger("replica.cli.faults")

MAX_CLIENTS = 8
MAX_LINE_BYTES = 64 * 1024
IDLE_SECONDS = 10.0
WRITE_SECONDS = 5.0
REACHABLE_AT_LOOPBACK = ("127.0.0.1", "localhost", "0.0.0.0", "::")  # where proxies dial 127.0.0.1

PeerOptions = dict[str, list[str]]
"""Node id → the `replica serve` options that route its peer links through the proxies."""


class FaultControl:
    """The proxies of a cluster and what each request does to them."""

    def __init__(self, node_ids: Sequence[str], partitioner: Partitioner, token: str) -> None:
        self.node_ids = list(node_ids)
        self.partitioner = partitioner
        self.token = token
        self._lock = asyncio.Lock()

    async def answer(self, body: Any) -> dict[str, Any]:
        """The reply to one decoded request: `<type>_ok` with the network now, or an error."""
        reply: dict[str, Any]
        try:
            if not isinstance(body, dict):
                raise FaultRequestError(MALFORMED, "a request must be a JSON object")
            if not secrets.compare_digest(str(body.get("token", "")), self.token):
                raise FaultRequestError(NOT_AUTHORISED, "missing or wrong token")
            request = check_request(body, self.node_ids)
            async with self._lock:
                await self._apply(request)
                reply = {"type": f"{request.type}_ok", **self.network()}
        except FaultRequestError as exc:
            reply = error(exc.code, str(exc))
        except (OSError, ValueError) as exc:  # a proxy that could not listen again
            log.error("fault request failed: %s", exc)
            reply = error(CRASH, f"a proxy could not be changed: {exc}")
        if isinstance(body, dict) and "msg_id" in body:
            reply["in_reply_to"] = body["msg_id"]
        return reply

    async def _apply(self, request: FaultRequest) -> None:
        if request.type == "partition":
            await self.partitioner.partition([set(group) for group in request.groups])
        elif request.type in ("isolate", "cut"):
            await self.partitioner.cut(request.links)
        elif request.type == "latency":
            await self.partitioner.set_latency(request.links, request.delay_ms, request.jitter_ms)
        elif request.type == "heal":  # the network back to normal: no cut, no latency
            await self.partitioner.heal_all()
            await self.partitioner.clear()

    def network(self) -> dict[str, Any]:
        """Every directed link: whether it is cut, its latency."""
        state = self.partitioner.state()
        links = [
            {
                "from": link[0],
                "to": link[1],
                "cut": bool(state[link]["cut"]),
                "delay_ms": state[link]["latency_ms"],
                "jitter_ms": state[link]["jitter_ms"],
            }
            for link in all_links(self.node_ids)
        ]
        cut = [[link["from"], link["to"]] for link in links if link["cut"]]
        return {"cut": cut, "links": links}


def error(code: int, text: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "text": text}


class ControlServer:
    """The loopback endpoint: NDJSON requests in, replies out, bounded in every way."""

    def __init__(self, control: FaultControl) -> None:
        self.control = control
        self._clients: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on an ephemeral loopback port; returns it."""
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0, limit=MAX_LINE_BYTES)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            peer = writer.get_extra_info("peername")
            if not peer or not ipaddress.ip_address(peer[0]).is_loopback:
                return
            if len(self._clients) >= MAX_CLIENTS:
                text = f"more than {MAX_CLIENTS} control connections open"
                await self._send(writer, error(TEMPORARILY_UNAVAILABLE, text))
                return
            self._clients.add(task)
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self._clients.discard(task)
            writer.transport.abort()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request line; False once the connection is done."""
        try:
            line = await asyncio.wait_for(reader.readline(), IDLE_SECONDS)
        except (ValueError, asyncio.LimitOverrunError):
            text = f"request longer than {MAX_LINE_BYTES} bytes"
            await self._send(writer, error(MALFORMED, text))
            return False
        if not line:
            return False
        if not line.strip():
            return True
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            await self._send(writer, error(MALFORMED, "not JSON"))
            return True
        reply = await self.control.answer(body)
        await self._send(writer, reply)
        return reply.get("code") != NOT_AUTHORISED

    async def _send(self, writer: asyncio.StreamWriter, reply: dict[str, Any]) -> None:
        writer.write(orjson.dumps(reply) + b"\n")
        await asyncio.wait_for(writer.drain(), WRITE_SECONDS)


def check_local(config: ClusterConfig) -> None:
    """ConfigError unless every node can be reached at 127.0.0.1, where the proxies dial it."""
    for node in config.nodes:
        if node.host not in REACHABLE_AT_LOOPBACK:
            raise ConfigError(
                f"--faults reaches every node at {LOOPBACK}: {node.id} listens at {node.host}"
            )


@contextlib.asynccontextmanager
async def running_faults(config_path: Path, config: ClusterConfig) -> AsyncIterator[PeerOptions]:
    """Proxies on every link and the control endpoint, for as long as the block runs.

    Yields each node's `replica serve` options; on exit the endpoint and
    every proxy are closed and the state file is removed, whatever happened.
    """
    ids = config.node_ids
    links = all_links(ids)
    ports = {node.id: node.port for node in config.nodes}
    proxies = {
        link: LinkProxy(port, ports[link[1]])
        for link, port in zip(links, free_listen_ports(len(links)), strict=True)
    }
    partitioner = Partitioner(proxies)
    control = FaultControl(ids, partitioner, secrets.token_hex(16))
    server = ControlServer(control)
    pid = os.getpid()
    try:
        for proxy in proxies.values():
            await proxy.start()
        port = await server.start()
        state = write_state_file(config_path, FaultEndpoint(pid, LOOPBACK, port, control.token))
        print(
            f"faults: {len(proxies)} link proxies, control at {LOOPBACK}:{port} ({state})",
            flush=True,
        )
        yield {
            node: [
                f"--peer-address={target}={LOOPBACK}:{proxy.listen_port}"
                for (source, target), proxy in proxies.items()
                if source == node
            ]
            for node in ids
        }
    finally:
        remove_state_file(config_path, pid)
        await server.close()
        await partitioner.close()
