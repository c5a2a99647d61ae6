#!/usr/bin/env python3
"""TCP proxies for the benchmark's peer links, run as a process of their own.

    python scripts/bench_proxy.py --link n1>n2:LISTEN:TARGET [--link ...]

Each node's cluster file names every peer at the port of a proxy that forwards
to the peer's real port, one proxy per directed link, so the benchmark can
partition the cluster without touching the nodes: a *cut* closes a proxy's
connections and its listening socket (the dialling node sees its link drop and
its redials refused, as with a dead peer), and a *heal* listens on the same
port again.  Links start cut, so the benchmark can heal them once every node
listens, and no node ever sees a link that accepts and then fails.

Each link is the testing kit's `LinkProxy` (replica.testing.proxy), the one
the tests partition clusters with.  The proxies run in their own process so
that forwarding never waits for the benchmark's client work, and a tap on each
counts what crosses it by message type (from the `"type"` near the start of
every line), which tells where the replication bytes go.

Control is one JSON object per line on stdin, one answer per line on stdout:
`{"cmd": "heal" | "cut", "links": [names]}` → `{"ok": true}`;
`{"cmd": "reset"}` zeroes the tallies → `{"ok": true}`; and `{"cmd": "stats"}` →
`{"ok": true, "stats": {link: {"sent": {type: [lines, bytes, first, last]},
"replies": {...}, "accepted": [times]}}}` where `sent` is what the dialling node
wrote, `replies` what the listening node answered, and the times are
`time.monotonic()` readings.  End of stdin stops every proxy and the
process, so a benchmark that dies takes its proxies with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from typing import Any

import orjson

from replica.testing.proxy import Direction, LinkProxy

HEAD_BYTES = 160  # a line's message type sits in its first few dozen bytes
TYPE_PATTERN = re.compile(rb'"type":\s*"([^"]{1,64})"')


class Tally:
    """Lines and bytes of one direction of a link by message type, and when they passed.

    Each type maps to `[lines, bytes, first, last]`, the times being
    `time.monotonic()` when a line of that type was complete: on Linux that
    clock is shared by every process, so the benchmark can put them on its
    own timeline.  Lines can span reads, so the tally keeps the head of the
    line in progress and its length, and classifies it when its newline arrives.
    """

    def __init__(self) -> None:
        self.by_type: dict[str, list[Any]] = {}
        self._head = bytearray()
        self._length = 0

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end + 1
            self._length += stop - start
            if len(self._head) < HEAD_BYTES:
                self._head += data[start : min(stop, start + HEAD_BYTES - len(self._head))]
            if end < 0:
                return
            self._finish_line()
            start = stop
            if start == len(data):
                return

    def _finish_line(self) -> None:
        match = TYPE_PATTERN.search(self._head)
        name = match.group(1).decode(errors="replace") if match else "?"
        now = time.monotonic()
        entry = self.by_type.setdefault(name, [0, 0, now, now])
        entry[0] += 1
        entry[1] += self._length
        entry[3] = now
        self._head.clear()
        self._length = 0


class Link:
    """One directed peer link: the kit's `LinkProxy`, its two directions tallied by type."""

    def __init__(self, name: str, listen_port: int, target_port: int) -> None:
        self.name = name
        self.tallies: dict[Direction, Tally] = {"sent": Tally(), "replies": Tally()}
        self.accepted: list[float] = []  # when each connection through it was accepted
        self.proxy = LinkProxy(
            listen_port,
            target_port,
            tap=lambda direction, data: self.tallies[direction].feed(data),
            on_accept=lambda: self.accepted.append(time.monotonic()),
        )

    def stats(self) -> dict[str, Any]:
        return {
            "sent": self.tallies["sent"].by_type,
            "replies": self.tallies["replies"].by_type,
            "accepted": self.accepted,
        }

    def reset(self) -> None:
        """Start counting afresh (a line in progress is counted whole when it ends)."""
        for tally in self.tallies.values():
            tally.by_type.clear()
        self.accepted.clear()


def parse_link(text: str) -> Link:
    """`NAME:LISTEN:TARGET`, e.g. `n1>n2:40001:40100`."""
    name, listen, target = text.rsplit(":", 2)
    return Link(name, int(listen), int(target))


async def serve(links: dict[str, Link]) -> None:
    """Answer control lines from stdin until it closes, then close every link."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            answer = await _command(links, orjson.loads(line))
            sys.stdout.buffer.write(orjson.dumps(answer) + b"\n")
            sys.stdout.flush()
    finally:
        for link in links.values():
            await link.proxy.close()


async def _command(links: dict[str, Link], command: dict[str, Any]) -> dict[str, Any]:
    cmd = command.get("cmd")
    try:
        if cmd in ("heal", "cut"):
            for name in command.get("links", list(links)):
                await getattr(links[name].proxy, cmd)()
            return {"ok": True}
        if cmd == "stats":
            return {"ok": True, "stats": {name: link.stats() for name, link in links.items()}}
        if cmd == "reset":
            for link in links.values():
                link.reset()
            return {"ok": True}
    except (KeyError, OSError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": False, "error": f"unknown command {cmd!r}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", action="append", default=[], metavar="NAME:LISTEN:TARGET")
    args = parser.parse_args()
    links = {link.name: link for link in map(parse_link, args.link)}
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(links))
    return 0


if __name__ == "__main__":
    sys.exit(main())
