"""An async newline-delimited JSON client for a node's port.

Contract: `call(body)` sends one request (numbered unless it carries a
`msg_id`) and returns the reply body, whatever its type, error replies
included.  The methods named after message types (`mv_write`, `status`, ...),
whose writes take `w=` and reads `r=` (a quorum), return the reply body of a
success and raise `ReplicaError`, carrying the node's `code` and `text`, for
an error reply, so a scenario reads as the protocol does.  Lower down,
`send`, `send_raw` and `read_line` speak raw lines, for tests of the framing
itself.  `connect(..., tls=context,
server_hostname=node_id)` speaks TLS to a node serving it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import orjson

REPLY_TIMEOUT = 10.0
READ_LIMIT = 64 << 20  # replies of any size a scenario produces

Body = dict[str, Any]
Quorum = int | str | None
"""A request's `w` or `r`: 1..cluster size, "one", "quorum" or "all"; None: the cluster's."""


class ReplicaError(Exception):
    """A node's error reply: `code` is the protocol's error code, `text` its explanation."""

    def __init__(self, code: int, text: str, reply: Body) -> None:
        super().__init__(f"error {code}: {text}")
        self.code = code
        self.text = text
        self.reply = reply


def without_ids(reply: Body) -> Body:
    """A reply body without `msg_id` and `in_reply_to`: what replicas can agree on."""
    return {k: v for k, v in reply.items() if k not in ("msg_id", "in_reply_to")}


def _fields(**fields: Any) -> Body:
    """The fields given, without those left at None (optional in the protocol)."""
    return {name: value for name, value in fields.items() if value is not None}


class JsonClient:
    """One connection to a node: one request at a time, or raw bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.next_msg_id = 1
        self.unmatched: list[Body] = []

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        timeout: float = REPLY_TIMEOUT,
        *,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> JsonClient:
        """With `tls`, over TLS to a server whose certificate names `server_hostname`."""
        hostname = None if tls is None else server_hostname or host
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                host, port, limit=READ_LIMIT, ssl=tls, server_hostname=hostname
            ),
            timeout,
        )
        return cls(reader, writer)

    async def __aenter__(self) -> JsonClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the protocol's messages -----------------------------------------------------------

    async def call(self, body: Body, timeout: float = REPLY_TIMEOUT) -> Body:
        """Send `body` as it is (numbered); the reply body, error replies included."""
        return await self.request(body, timeout)

    async def checked(self, body: Body, timeout: float = REPLY_TIMEOUT) -> Body:
        """`call`, raising `ReplicaError` for an error reply."""
        reply = await self.request(body, timeout)
        if reply.get("type") == "error":
            raise ReplicaError(int(reply.get("code", 0)), str(reply.get("text", "")), reply)
        return reply

    async def auth(self, password: str) -> Body:
        """Send the node's client password (`password_file`); `ReplicaError` 1000 if wrong."""
        return await self.checked({"type": "auth", "password": password})

    async def status(self) -> Body:
        return await self.checked({"type": "status"})

    async def mv_write(
        self, key: str, value: Any, context: dict[str, int] | None = None, *, w: Quorum = None
    ) -> Body:
        """A write; `context` is what a read returned, to supersede the siblings it showed."""
        return await self.checked(
            _fields(type="mv_write", key=key, value=value, context=context, w=w)
        )

    async def mv_read(self, key: str, *, r: Quorum = None) -> Body:
        return await self.checked(_fields(type="mv_read", key=key, r=r))

    async def kv_put(self, key: str, value: Any, clock: Any, *, w: Quorum = None) -> Body:
        return await self.checked(_fields(type="kv_put", key=key, value=value, clock=clock, w=w))

    async def kv_get(self, key: str, *, r: Quorum = None) -> Body:
        return await self.checked(_fields(type="kv_get", key=key, r=r))

    async def kv_resolve(self, key: str, value: Any, clock: Any, *, w: Quorum = None) -> Body:
        body = _fields(type="kv_resolve", key=key, value=value, clock=clock, w=w)
        return await self.checked(body)

    async def lww_write(
        self, key: str, value: Any, timestamp: int | None = None, *, w: Quorum = None
    ) -> Body:
        return await self.checked(
            _fields(type="lww_write", key=key, value=value, timestamp=timestamp, w=w)
        )

    async def lww_read(self, key: str, *, r: Quorum = None) -> Body:
        return await self.checked(_fields(type="lww_read", key=key, r=r))

    async def mvcc_put(
        self, key: str, value: Any, timestamp: int | None = None, *, w: Quorum = None
    ) -> Body:
        return await self.checked(
            _fields(type="mvcc_put", key=key, value=value, timestamp=timestamp, w=w)
        )

    async def mvcc_get(
        self, key: str, read_timestamp: int | None = None, *, r: Quorum = None
    ) -> Body:
        body = _fields(type="mvcc_get", key=key, read_timestamp=read_timestamp, r=r)
        return await self.checked(body)

    async def mvcc_snapshot(self, keys: list[str], read_timestamp: int) -> Body:
        body = {"type": "mvcc_snapshot", "keys": keys, "read_timestamp": read_timestamp}
        return await self.checked(body)

    async def mvcc_gc(self, before: int) -> Body:
        return await self.checked({"type": "mvcc_gc", "before": before})

    async def counter_add(self, key: str, delta: int, *, w: Quorum = None) -> Body:
        return await self.checked(_fields(type="counter_add", key=key, delta=delta, w=w))

    async def counter_read(self, key: str, *, r: Quorum = None) -> Body:
        return await self.checked(_fields(type="counter_read", key=key, r=r))

    # -- requests, replies and lines -------------------------------------------------------

    def take_msg_id(self) -> int:
        msg_id = self.next_msg_id
        self.next_msg_id += 1
        return msg_id

    async def request(self, body: Body, timeout: float = REPLY_TIMEOUT) -> Body:
        """Send a bare body (numbered unless it has a msg_id); return the reply body."""
        body = {**body}
        body.setdefault("msg_id", self.take_msg_id())
        await self.send(body)
        return await self.reply_to(body["msg_id"], timeout)

    async def envelope_request(
        self,
        body: Body,
        src: str = "c1",
        dest: str = "n1",
        timeout: float = REPLY_TIMEOUT,
    ) -> Body:
        """Send `body` in the envelope form; return the whole reply message."""
        body = {**body}
        body.setdefault("msg_id", self.take_msg_id())
        await self.send({"src": src, "dest": dest, "body": body})
        return await self.reply_to(body["msg_id"], timeout, envelope=True)

    async def reply_to(
        self, msg_id: int, timeout: float = REPLY_TIMEOUT, *, envelope: bool = False
    ) -> Body:
        """The reply to `msg_id`; lines answering something else are kept in `unmatched`."""

        async def wait() -> Body:
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

    async def read_json(self, timeout: float | None = REPLY_TIMEOUT) -> Body:
        line = await self.read_line(timeout)
        if not line:
            raise ConnectionError("connection closed by the node")
        message = orjson.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"not a JSON object: {line!r}")
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

    async def mv_delete(self, key: str, context: dict[str, int], *, w: Quorum = None) -> Body:
        """Delete the values `context` covers (the context of an earlier reply)."""
        return await self.checked(_fields(type="mv_delete", key=key, context=context, w=w))

    async def kv_delete(self, key: str, clock: Any, *, w: Quorum = None) -> Body:
        """Delete the siblings `clock` dominates; `status` is "rejected" for a stale clock."""
        return await self.checked(_fields(type="kv_delete", key=key, clock=clock, w=w))

    async def lww_delete(self, key: str, timestamp: int | None = None, *, w: Quorum = None) -> Body:
        return await self.checked(_fields(type="lww_delete", key=key, timestamp=timestamp, w=w))

    async def mvcc_delete(
        self, key: str, timestamp: int | None = None, *, w: Quorum = None
    ) -> Body:
        return await self.checked(_fields(type="mvcc_delete", key=key, timestamp=timestamp, w=w))

    async def counter_delete(self, key: str, *, w: Quorum = None) -> Body:
        """Take away the total this node sees; additions made concurrently elsewhere stay."""
        return await self.checked(_fields(type="counter_delete", key=key, w=w))
