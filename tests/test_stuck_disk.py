"""Durable nodes under a stuck or failing disk, a client that never reads, and half-closes.

A stuck disk is a real log writer stopped with SIGSTOP: writes then get
error 13 "disk stalled" after `commit_timeout_ms`, while reads of keys with
no write on its way, and `status`, answer at once.  Every test sends the
writer SIGCONT (or kills its node) on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from replica.cli.config import ConfigError, parse_cluster
from replica.durable import durability as durability_module
from replica.durable.durability import Durability, NotDurable
from replica.durable.log_link import Done
from replica.durable.store import MemoryStore
from replica.keyspaces import Keyspaces
from replica.node.handlers import lww as lww_ops
from replica.node.handlers import mv as mv_ops
from replica.node.router import Node
from replica.transports.tcp import serve_tcp
from tests.harness import (
    LOOPBACK,
    JsonClient,
    NodeProcess,
    eventually,
    free_ports,
    write_cluster,
)
from tests.names import LWW, MV

COMMIT_TIMEOUT_MS = 500


class StuckStore(MemoryStore):
    """A store whose commits end only when the test says, or fail like a full disk."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[bytes, Done]] = []
        self.fail_with: str | None = None

    def submit(self, record: bytes, done: Done) -> None:
        if self.fail_with is not None:
            asyncio.get_running_loop().call_soon(done, self.fail_with)
        else:
            self.waiting.append((record, done))

    def finish_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for record, done in waiting:
            self.store_record(record)
            done(None)


# -- in process --------------------------------------------------------------------------------


async def test_a_key_is_settled_once_no_change_to_it_is_on_its_way() -> None:
    ks, store = Keyspaces("n1", mvcc_retention_ms=0), StuckStore()
    durability = Durability(ks, store)
    assert durability.settled(MV, "k") and durability.all_settled()
    mv_ops.write(ks, "k", 1, None)
    assert not durability.settled(MV, "k")  # dirty
    assert durability.settled(MV, "other") and durability.settled(LWW, "k")
    await asyncio.sleep(0)
    assert len(store.waiting) == 1
    assert not durability.settled(MV, "k")  # in a commit on its way
    assert not durability.all_settled()
    store.finish_all()
    await asyncio.sleep(0)
    assert durability.settled(MV, "k") and durability.all_settled()
    await durability.close()


async def test_async_mode_counts_every_key_as_settled() -> None:
    ks = Keyspaces("n1", mvcc_retention_ms=0)
    durability = Durability(ks, MemoryStore(), mode="async", flush_interval_ms=60_000)
    mv_ops.write(ks, "k", 1, None)
    assert durability.settled(MV, "k") and durability.all_settled()
    await durability.close()


async def test_a_commit_past_its_timeout_fails_its_barrier_and_may_still_land() -> None:
    ks, store = Keyspaces("n1", mvcc_retention_ms=0), StuckStore()
    durability = Durability(ks, store, commit_timeout_ms=50)
    lww_ops.write(ks, "k", "v", 1)
    barrier = durability.barrier()
    assert barrier is not None
    started = time.monotonic()
    with pytest.raises(NotDurable, match=r"^disk stalled$"):
        await barrier
    assert 0.04 < time.monotonic() - started < 2
    status = durability.status()
    assert (status["timeouts"], status["commits_in_flight"]) == (1, 1)
    # The barrier's deadline ran from the write; the commit began a loop turn later, so
    # the disk shows as stalled once the commit itself is past the timeout.
    deadline = time.monotonic() + 2
    while (status := durability.status())["disk"] != "stalled":
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.005)
    assert status["oldest_commit_ms"] >= 50
    assert not durability.settled(LWW, "k")  # unknown: still on its way
    store.finish_all()  # the disk comes back
    await asyncio.sleep(0)
    assert (LWW, "k") in store.records
    assert durability.settled(LWW, "k")
    assert durability.barrier() is None
    assert durability.status()["disk"] == "ok"
    lww_ops.write(ks, "k", "w", 2)  # and later writes are acknowledged as before
    later = durability.barrier()
    assert later is not None
    await asyncio.sleep(0)
    store.finish_all()
    await later
    await durability.close()


async def test_a_failing_disk_shows_in_status_until_a_commit_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(durability_module, "RETRY_AFTER_FAILURE_S", 0.01)
    ks, store = Keyspaces("n1", mvcc_retention_ms=0), StuckStore()
    store.fail_with = "OSError: [Errno 28] No space left on device"
    durability = Durability(ks, store)
    lww_ops.write(ks, "k", "v", 1)
    with pytest.raises(NotDurable, match="No space left"):
        await durability.barrier()  # type: ignore[misc]
    assert durability.status()["disk"] == "failing"
    store.fail_with = None
    await eventually(
        _async(lambda: len(store.waiting)), lambda n: n == 1, "the retried commit", timeout=5
    )
    store.finish_all()
    await asyncio.sleep(0)
    assert durability.status()["disk"] == "ok"
    await durability.close()


def _async(function: Any) -> Any:
    async def call() -> Any:
        return function()

    return call


def test_commit_timeout_is_a_checked_cluster_setting() -> None:
    node = {"id": "n1", "host": "127.0.0.1", "port": 7001}
    assert parse_cluster({"nodes": [node]}).commit_timeout_ms == 5000
    config = parse_cluster({"cluster": {"commit_timeout_ms": 250}, "nodes": [node]})
    assert config.commit_timeout_ms == 250
    for bad in (0, -1, "5s"):
        with pytest.raises(ConfigError, match="commit_timeout_ms"):
            parse_cluster({"cluster": {"commit_timeout_ms": bad}, "nodes": [node]})


async def test_status_and_reads_answer_while_commits_fail_or_hang(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Over TCP: a full disk fails the writes, never `status` or a read of a settled key."""
    monkeypatch.setattr(durability_module, "RETRY_AFTER_FAILURE_S", 0.01)
    store = StuckStore()
    node = Node("n1", ["n1"])
    node.durability = Durability(node.keyspaces, store, commit_timeout_ms=60_000)
    lww_ops.write(node.keyspaces, "old", "v", 1)
    await asyncio.sleep(0)
    store.finish_all()
    server = await serve_tcp(node, LOOPBACK, 0)
    host, port = server.addresses[0]
    client = await JsonClient.connect(host, port)
    try:
        store.fail_with = "OSError: [Errno 28] No space left on device"
        write = await client.request({"type": "lww_write", "key": "new", "value": 1})
        assert (write["type"], write["code"]) == ("error", 13), write
        status = await client.request({"type": "status"}, timeout=2)
        assert status["type"] == "status_ok", status
        assert status["durability"]["disk"] == "failing"
        store.fail_with = None  # the disk hangs instead: the retried commit never ends
        await eventually(_async(lambda: len(store.waiting)), bool, "a commit on its way", 5)
        read = await client.request({"type": "lww_read", "key": "old"}, timeout=2)
        assert read["value"] == "v", read
        pipelined = [{"type": "status", "msg_id": 70}, {"type": "lww_read", "key": "old",
                     "msg_id": 71}, {"type": "mv_read", "key": "absent", "msg_id": 72}]  # fmt: skip
        await client.send_raw(b"".join(orjson.dumps(body) + b"\n" for body in pipelined))
        replies = [await client.read_json(timeout=2) for _ in pipelined]
        assert [r["in_reply_to"] for r in replies] == [70, 71, 72]
        pending = asyncio.ensure_future(client.request({"type": "lww_read", "key": "new"}))
        await asyncio.sleep(0.2)
        assert not pending.done()  # its write is not on disk: its value waits for the commit
        store.finish_all()
        assert (await asyncio.wait_for(pending, 5))["value"] == 1
    finally:
        await client.close()
        await server.close()
        store.finish_all()
        await node.durability.close()


async def test_a_read_never_overtakes_the_held_reply_to_an_earlier_write() -> None:
    store = StuckStore()
    node = Node("n1", ["n1"])
    node.durability = Durability(node.keyspaces, store)
    server = await serve_tcp(node, LOOPBACK, 0)
    client = await JsonClient.connect(*server.addresses[0])
    try:
        await client.send({"type": "lww_write", "key": "a", "value": 1, "msg_id": 1})
        await eventually(_async(lambda: len(store.waiting)), bool, "the write's commit", 5)
        await client.send({"type": "lww_read", "key": "b", "msg_id": 2})  # settled: absent
        other = await JsonClient.connect(*server.addresses[0])
        async with other:  # the same read on another connection answers at once
            assert (await other.request({"type": "lww_read", "key": "b"}, timeout=2))["code"] == 20
        with pytest.raises(TimeoutError):
            await client.read_json(timeout=0.2)
        store.finish_all()
        replies = [await client.read_json(timeout=5) for _ in range(2)]
        assert [r["in_reply_to"] for r in replies] == [1, 2]
        assert replies[0]["type"] == "lww_write_ok"
    finally:
        await client.close()
        await server.close()
        store.finish_all()
        await node.durability.close()


def test_the_status_table_shows_a_stalled_or_failing_disk() -> None:
    from replica.cli.status_table import format_table

    stalled = {"mode": "sync", "disk": "stalled", "failures": 0}
    failing = {"mode": "sync", "disk": "failing", "failures": 3}
    table = format_table(
        [
            ("n1", {"durability": {"mode": "sync", "disk": "ok"}, "peers": []}),
            ("n2", {"durability": stalled, "peers": []}),
            ("n3", {"durability": failing, "peers": []}),
        ]
    )
    header, *rows = table.splitlines()
    at = header.index(" disk ") + 1  # one column per data type comes before it
    cells = [row[at:].split()[0] for row in rows]
    assert cells == ["sync", "sync,disk-STALLED", "sync,disk-FAILING,commits-FAILED:3"]


# -- real processes ------------------------------------------------------------------------------


def durable_node(directory: Path, *, resp: bool = False, **cluster: int) -> NodeProcess:
    """A one-node cluster n1 with a data dir (durability "sync"), started and ready."""
    ports = free_ports(2)
    resp_ports = {"n1": ports[1]} if resp else None
    config = write_cluster(directory, ["n1"], ports=ports[:1], resp_ports=resp_ports, **cluster)
    node = NodeProcess(config, "n1", LOOPBACK, ports[0])
    node.start().wait_ready()
    if resp:
        node.wait_ready(port=ports[1])
    return node


def log_writer_pid(node: NodeProcess) -> int:
    found = subprocess.run(
        ["pgrep", "-P", str(node.pid), "-f", "replica.durable.log_writer"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert len(found) == 1, f"log writers of {node.pid}: {found}"
    return int(found[0])


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process stopped (SIGSTOP) for the block, and continued after it whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


async def timed(client: JsonClient, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    reply = await client.request(body, timeout=30)
    return reply, time.monotonic() - started


async def test_a_stuck_log_writer_fails_writes_in_time_and_reads_and_status_still_answer(
    scratch_dir: Path,
) -> None:
    node = durable_node(scratch_dir, commit_timeout_ms=COMMIT_TIMEOUT_MS)
    timeout_s = COMMIT_TIMEOUT_MS / 1000
    try:
        async with await node.connect() as client:
            before = await client.request({"type": "mv_write", "key": "before", "value": "b"})
            assert before["type"] == "mv_write_ok"
            with stopped(log_writer_pid(node)):
                write, took = await timed(
                    client, {"type": "mv_write", "key": "during", "value": "d"}
                )
                assert (write["type"], write["code"]) == ("error", 13), write
                assert write["text"] == "write not durable: disk stalled"
                assert timeout_s * 0.8 < took < timeout_s + 3, took

                read, took = await timed(client, {"type": "mv_read", "key": "before"})
                assert [v["value"] for v in read["values"]] == ["b"], read
                assert took < timeout_s, took  # no barrier: the key has no write on its way

                unsettled, took = await timed(client, {"type": "mv_read", "key": "during"})
                assert (unsettled["type"], unsettled["code"]) == ("error", 13), unsettled
                assert took > timeout_s * 0.8  # never shown before it is on disk

                status, took = await timed(client, {"type": "status"})
                assert status["type"] == "status_ok", status
                assert took < timeout_s, took
                assert status["durability"]["disk"] == "stalled", status["durability"]
                assert status["durability"]["oldest_commit_ms"] >= COMMIT_TIMEOUT_MS
                assert status["durability"]["timeouts"] >= 2
            after = await client.request({"type": "mv_write", "key": "after", "value": "a"})
            assert after["type"] == "mv_write_ok", after
            read = await client.request({"type": "mv_read", "key": "during"})
            assert [v["value"] for v in read["values"]] == ["d"], read  # error 13 was unknown
            status = await client.request({"type": "status"})
            assert status["durability"]["disk"] == "ok", status["durability"]
        node.kill()  # and the write that timed out survives, as every later one
        node.start().wait_ready()
        async with await node.connect() as client:
            for key, value in (("before", "b"), ("during", "d"), ("after", "a")):
                read = await client.request({"type": "mv_read", "key": key})
                assert [v["value"] for v in read["values"]] == [value], (key, read)
    finally:
        node.stop()
        print(node.stderr_text())


async def test_a_client_that_pipelines_writes_and_never_reads_cannot_grow_a_durable_node(
    scratch_dir: Path,
) -> None:
    node = durable_node(scratch_dir)
    line = orjson.dumps({"type": "lww_write", "key": "k", "value": "v" * 100}) + b"\n"
    chunk = line * 2000
    limit_bytes, limit_growth = 300 << 20, 200 << 20
    try:
        rss_before = node.rss_bytes()
        sock = socket.create_connection((node.host, node.port))
        sock.setblocking(False)
        sent, deadline = 0, time.monotonic() + 60
        try:
            while sent < limit_bytes and time.monotonic() < deadline:
                _, writable, _ = select.select([], [sock], [], 1.5)
                if not writable:
                    break  # the node stopped reading
                with contextlib.suppress(BlockingIOError):
                    sent += sock.send(chunk)
            blocked = sent < limit_bytes and time.monotonic() < deadline
            growth = node.rss_bytes() - rss_before
            async with await node.connect() as other:
                reply, took = await timed(other, {"type": "lww_write", "key": "o", "value": 1})
                assert reply["type"] == "lww_write_ok", reply
                assert took < 5, took
            assert blocked, f"the node read {sent >> 20} MiB from a client that reads nothing"
            assert growth < limit_growth, f"RSS grew by {growth >> 20} MiB: {sent >> 20} MiB sent"
            # Once the client reads, the node reads again: every whole line gets its reply.
            sock.setblocking(True)
            sock.settimeout(30)
            expected, replies = sent // len(line), 0
            while replies < expected:
                data = sock.recv(1 << 20)
                assert data, f"closed after {replies} of {expected} replies"
                replies += data.count(b"\n")
            assert replies == expected
        finally:
            sock.close()
    finally:
        node.stop()
        print(node.stderr_text())


def half_closed_exchange(port: int, requests: bytes, timeout: float = 30) -> bytes:
    """Send `requests`, shut the sending side, and read until the node closes."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(requests)
        sock.shutdown(socket.SHUT_WR)
        received = bytearray()
        while chunk := sock.recv(1 << 16):
            received += chunk
    return bytes(received)


async def test_a_half_closed_connection_gets_every_reply_from_a_durable_node(
    scratch_dir: Path,
) -> None:
    node = durable_node(scratch_dir)
    count = 500
    requests = b"".join(
        orjson.dumps({"type": "mv_write", "key": f"k{i % 7}", "value": i, "msg_id": i}) + b"\n"
        for i in range(count)
    )
    try:
        received = await asyncio.to_thread(half_closed_exchange, node.port, requests)
        replies = [orjson.loads(line) for line in received.splitlines()]
        assert [r["in_reply_to"] for r in replies] == list(range(count))
        assert {r["type"] for r in replies} == {"mv_write_ok"}
    finally:
        node.stop()
        print(node.stderr_text())


async def test_a_half_closed_resp_connection_gets_every_reply_from_a_durable_node(
    scratch_dir: Path,
) -> None:
    node = durable_node(scratch_dir, resp=True)
    resp_port = int(node.config.read_text().split("resp_port = ")[1].split()[0])
    count = 500
    requests = b"".join(
        b"*4\r\n$5\r\nMVREG\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
        % (len(key), key, len(value), value)
        for key, value in ((b"k%d" % (i % 7), b"%d" % i) for i in range(count))
    )
    try:
        received = await asyncio.to_thread(half_closed_exchange, resp_port, requests)
        assert received == b"+OK\r\n" * count, received[:200]
    finally:
        node.stop()
        print(node.stderr_text())


async def test_resp_reads_of_settled_keys_answer_while_the_log_writer_is_stuck(
    scratch_dir: Path,
) -> None:
    """The same rule over RESP: a GET of a key with no write on its way needs no commit."""
    import redis.asyncio as redis

    node = durable_node(scratch_dir, resp=True, commit_timeout_ms=COMMIT_TIMEOUT_MS)
    resp_port = int(node.config.read_text().split("resp_port = ")[1].split()[0])
    timeout_s = COMMIT_TIMEOUT_MS / 1000
    client = redis.Redis(host=LOOPBACK, port=resp_port, protocol=2)
    try:
        assert await client.execute_command("MVREG", "SET", "before", "b") == b"OK"
        assert await client.execute_command("TREG", "SET", "flag", "on", "7") == b"OK"
        with stopped(log_writer_pid(node)):
            started = time.monotonic()
            with pytest.raises(redis.ResponseError, match="disk stalled"):
                await client.execute_command("MVREG", "SET", "during", "d")
            assert time.monotonic() - started > timeout_s * 0.8
            started = time.monotonic()
            assert await client.execute_command("MVREG", "GET", "before") == [b"b"]
            assert await client.execute_command("TREG", "GET", "flag") == [b"on", 7]
            assert await client.execute_command("PING") is True
            assert time.monotonic() - started < timeout_s
            started = time.monotonic()
            with pytest.raises(redis.ResponseError, match="disk stalled"):
                await client.execute_command("MVREG", "GET", "during")  # never shown undurable
            assert time.monotonic() - started > timeout_s * 0.8
        assert await client.execute_command("MVREG", "GET", "during") == [b"d"]
    finally:
        await client.aclose()
        node.stop()
        print(node.stderr_text())
