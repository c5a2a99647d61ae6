"""Two `replica stdio` nodes wired to each other by the test, as Maelstrom would.

Each node's stdout is read line by line: a message addressed to the other
node goes to that node's stdin, anything else is a reply to the test's client.
The wire can hold the nodes' messages back for a while, so two writes are
truly concurrent before either node hears of the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from tests.harness import CONVERGE_TIMEOUT, REPLY_TIMEOUT, eventually, replica_command, without_ids

NODE_IDS = ["n1", "n2"]
CLIENT = "c1"


class StdioPair:
    """Two stdio nodes, a pump per node's stdout, and a client inbox per node."""

    def __init__(self, processes: dict[str, asyncio.subprocess.Process]) -> None:
        self.processes = processes
        self.inbox: dict[str, asyncio.Queue[dict[str, Any]]] = {
            n: asyncio.Queue() for n in processes
        }
        self.forwarded = 0
        self.forwarded_types: Counter[str] = Counter()
        self._held: list[tuple[str, bytes]] | None = None
        self._next_msg_id = 1
        self._pumps = [asyncio.create_task(self._pump(n)) for n in processes]

    def hold(self) -> None:
        """Keep node-to-node messages back until `release`."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for dest, line in held:
            self._deliver(dest, line)

    async def request(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        msg_id = self._next_msg_id
        self._next_msg_id += 1
        message = {"src": CLIENT, "dest": node_id, "body": {**body, "msg_id": msg_id}}
        self._write(node_id, orjson.dumps(message) + b"\n")
        deadline = time.monotonic() + REPLY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            reply = await asyncio.wait_for(self.inbox[node_id].get(), max(remaining, 0.001))
            if reply["body"].get("in_reply_to") == msg_id:
                assert reply["src"] == node_id and reply["dest"] == CLIENT, reply
                return reply["body"]

    async def _pump(self, node_id: str) -> None:
        stdout = self.processes[node_id].stdout
        assert stdout is not None
        while line := await stdout.readline():
            message = orjson.loads(line)
            dest = message.get("dest")
            if dest in self.processes and dest != node_id:
                self.forwarded_types[str(message.get("body", {}).get("type"))] += 1
                if self._held is not None:
                    self._held.append((dest, line))
                else:
                    self._deliver(dest, line)
            else:
                await self.inbox[node_id].put(message)

    def _deliver(self, dest: str, line: bytes) -> None:
        self.forwarded += 1
        self._write(dest, line)

    def _write(self, node_id: str, line: bytes) -> None:
        stdin = self.processes[node_id].stdin
        assert stdin is not None
        if not stdin.is_closing():  # closed: the pair is shutting down
            stdin.write(line)

    async def close(self) -> None:
        for process in self.processes.values():
            if process.stdin is not None:
                process.stdin.close()  # end of input ends the node
        for process in self.processes.values():
            try:
                await asyncio.wait_for(process.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for pump in self._pumps:
            pump.cancel()
        for pump in self._pumps:
            with contextlib.suppress(asyncio.CancelledError):
                await pump


@contextlib.asynccontextmanager
async def stdio_pair(directory: Path) -> AsyncIterator[StdioPair]:
    processes: dict[str, asyncio.subprocess.Process] = {}
    logs = {n: directory / f"{n}.stderr.log" for n in NODE_IDS}
    pair: StdioPair | None = None
    try:
        for node_id in NODE_IDS:
            with logs[node_id].open("wb") as stderr:
                processes[node_id] = await asyncio.create_subprocess_exec(
                    *replica_command("stdio", "--gossip-interval-ms", "50"),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                )
        pair = StdioPair(processes)
        yield pair
    finally:
        if pair is not None:
            await pair.close()
        else:
            for process in processes.values():
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for node_id, path in logs.items():
            print(f"--- {node_id} stderr ---\n{path.read_text(errors='replace')}")


async def test_two_stdio_nodes_gossip_to_each_other_through_the_test(scratch_dir: Path) -> None:
    async with stdio_pair(scratch_dir) as pair:
        for node_id in NODE_IDS:
            body = {"type": "init", "node_id": node_id, "node_ids": NODE_IDS}
            assert (await pair.request(node_id, body))["type"] == "init_ok"

        pair.hold()
        writes = {
            "n1": [
                {"type": "mv_write", "key": "k", "value": "from-n1"},
                {"type": "lww_write", "key": "k", "value": "from-n1", "timestamp": 7},
                {"type": "kv_put", "key": "k", "value": "from-n1", "clock": [1, 0]},
            ],
            "n2": [
                {"type": "mv_write", "key": "k", "value": "from-n2"},
                {"type": "lww_write", "key": "k", "value": "from-n2", "timestamp": 7},
                {"type": "kv_put", "key": "k", "value": "from-n2", "clock": [0, 1]},
            ],
        }
        for node_id, bodies in writes.items():
            for body in bodies:
                reply = await pair.request(node_id, body)
                assert reply["type"] == f"{body['type']}_ok", reply
        pair.release()

        reads = [
            {"type": "mv_read", "key": "k"},
            {"type": "lww_read", "key": "k"},
            {"type": "kv_get", "key": "k"},
        ]

        async def both() -> dict[str, list[dict[str, Any]]]:
            return {
                n: [without_ids(await pair.request(n, body)) for body in reads] for n in NODE_IDS
            }

        seen = await eventually(
            both,
            lambda seen: seen["n1"] == seen["n2"] and len(seen["n1"][0]["values"]) == 2,
            "both stdio nodes show the same two siblings",
            timeout=CONVERGE_TIMEOUT,
        )
        mv, lww, kv = seen["n1"]
        assert mv == {
            "type": "mv_read_ok",
            "values": [
                {"value": "from-n1", "vclock": {"n1": 1}, "dot": ["n1", 1]},
                {"value": "from-n2", "vclock": {"n2": 1}, "dot": ["n2", 1]},
            ],
            "context": {"n1": 1, "n2": 1},
        }
        assert lww == {"type": "lww_read_ok", "value": "from-n2", "timestamp": 7, "replica": "n2"}
        assert kv == {
            "type": "kv_get_ok",
            "values": [
                {"value": "from-n1", "clock": [1, 0]},
                {"value": "from-n2", "clock": [0, 1]},
            ],
        }
        assert pair.forwarded > 0


async def test_over_stdio_a_tombstone_is_kept_and_no_one_is_asked_to_confirm_it(
    scratch_dir: Path,
) -> None:
    """Collecting a tombstone relies on links that keep one sender's order; Maelstrom's need
    not, so a stdio node keeps its tombstones."""
    async with stdio_pair(scratch_dir) as pair:
        for node_id in NODE_IDS:
            body = {"type": "init", "node_id": node_id, "node_ids": NODE_IDS}
            assert (await pair.request(node_id, body))["type"] == "init_ok"
        for body in (
            {"type": "lww_write", "key": "f", "value": 1},
            {"type": "lww_delete", "key": "f"},
        ):
            assert (await pair.request("n1", body))["type"] == f"{body['type']}_ok"

        async def tombstones() -> dict[str, Any]:
            statuses = {n: await pair.request(n, {"type": "status"}) for n in NODE_IDS}
            return {
                n: (s["tombstones"]["lww"], s["tombstones_collected"]["lww"])
                for n, s in statuses.items()
            }

        await eventually(tombstones, lambda seen: all(v == (1, 0) for v in seen.values()), "spread")
        rounds = pair.forwarded_types["ae_roots"]
        await eventually(
            lambda: asyncio.sleep(0, pair.forwarded_types["ae_roots"]),
            lambda seen: seen >= rounds + 6,
            "anti-entropy rounds go on",
            timeout=CONVERGE_TIMEOUT,
        )
        assert await tombstones() == {n: (1, 0) for n in NODE_IDS}
        assert pair.forwarded_types["tombstone_ask"] == 0
