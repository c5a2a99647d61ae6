"""Clients that keep many requests in flight: the node's JSON lines, and RESP.

These are for checking what nodes hold and for status polls; the timed load
uses `load.LoadConnection`, which does no JSON work per reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from typing import Any

import hiredis
import orjson

from replica.testing.ports import LOOPBACK

from .report import BenchError, Body

READ_LIMIT = 64 << 20
READ_CONNECTIONS = 4  # per node, for verification reads
READ_WINDOW = 128


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
    async def open(cls, port: int, name: str, tls: ssl.SSLContext | None = None) -> Connection:
        """With `tls`, over TLS to a node whose certificate names `name`, its id."""
        reader, writer = await asyncio.open_connection(
            LOOPBACK,
            port,
            limit=READ_LIMIT,
            ssl=tls,
            server_hostname=None if tls is None else name,
        )
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
