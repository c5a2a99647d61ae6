#!/usr/bin/env python3
"""The floor for `bench.py throughput --floor`: the least a uvloop + orjson server does.

    python scripts/bench_floor.py --port PORT

It speaks the node's newline-delimited JSON and does none of the node's work:
every line is parsed, answered with `{"type": TYPE + "_ok", "in_reply_to":
MSG_ID, "msg_id": N}` (one counter for the whole server, as a node has) and
serialised, and the replies to every line one read brought leave in one write,
as the node's transport sends them.  Its replies per second under a load are
what this runtime allows on this machine; the node's, divided by the floor's
under the same load, is the share of that the node reaches.

It runs until it is signalled (the benchmark stops it with SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import socket
import sys
from typing import cast

import orjson
import uvloop

LOOPBACK = "127.0.0.1"
MALFORMED_CODE = 12  # the node's malformed-request error


class EchoConnection(asyncio.Protocol):
    """One client connection: split the read into lines, answer each, write once."""

    def __init__(self, msg_ids: itertools.count[int]) -> None:
        self.msg_ids = msg_ids
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as the node does
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        replies = [self.reply(line) for line in lines if line]
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def reply(self, line: bytes) -> bytes:
        try:
            body = orjson.loads(line)
            reply = {
                "type": body["type"] + "_ok",
                "in_reply_to": body.get("msg_id"),
                "msg_id": next(self.msg_ids),
            }
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            reply = {"type": "error", "code": MALFORMED_CODE, "msg_id": next(self.msg_ids)}
        return orjson.dumps(reply, option=orjson.OPT_APPEND_NEWLINE)

    def pause_writing(self) -> None:  # a client that does not read is not read from
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


async def serve(port: int) -> None:
    msg_ids = itertools.count()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: EchoConnection(msg_ids), LOOPBACK, port)
    async with server:
        await server.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="the loopback port to listen on")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
