"""Group commit, replies held until durable, recovery after kill -9, and fresh dots after a wipe."""

from __future__ import annotations

import asyncio
import fcntl
import os
import random
import signal
import struct
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from replica.cli.config import ConfigError, parse_cluster
from replica.crdt import registry
from replica.crdt.mv_register import MVRegister
from replica.durable import durability as durability_module
from replica.durable.durability import Durability, NotDurable
from replica.durable.lmdb_store import LmdbStore
from replica.durable.log_link import Done
from replica.durable.records import log_entries
from replica.durable.store import MemoryStore, open_store
from replica.keyspaces import Keyspaces
from replica.node.handlers import kv as kv_ops
from replica.node.handlers import lww as lww_ops
from replica.node.handlers import mv as mv_ops
from replica.node.handlers import mvcc as mvcc_ops
from replica.node.router import Node
from replica.transports.tcp import serve_tcp
from tests.harness import (
    CONVERGE_TIMEOUT,
    LOOPBACK,
    JsonClient,
    NodeProcess,
    eventually,
    free_ports,
    helper_pids,
    wait_unlocked,
)
from tests.names import KV, LWW, MV, MVCC


class SlowStore(MemoryStore):
    """A store whose commits take a while, and can be made to fail, like a full disk.

    A commit's result comes `delay` seconds after it was submitted, as the
    log writer's would, and the loop goes on meanwhile.
    """

    def __init__(self, delay: float = 0.01) -> None:
        super().__init__()
        self.delay = delay
        self.fail_with: Exception | None = None
        self.fail_keys: set[str] = set()  # a commit carrying one of them fails
        self.batch_sizes: list[int] = []
        self.in_flight = 0
        self.most_in_flight = 0

    def submit(self, record: bytes, done: Done) -> None:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        asyncio.get_running_loop().call_later(self.delay, self._finish, record, done)

    def _finish(self, record: bytes, done: Done) -> None:
        self.in_flight -= 1
        entries = log_entries(record)
        if self.fail_with is not None:
            done(f"{type(self.fail_with).__name__}: {self.fail_with}")
        elif any(key in self.fail_keys for _, key, _ in entries):
            done("OSError: [Errno 5] Input/output error")
        else:
            self.batch_sizes.append(len(entries))
            self.store_record(record)
            done(None)


def keyspaces() -> Keyspaces:
    return Keyspaces("n1", mvcc_retention_ms=0)


async def test_nothing_changed_means_no_barrier() -> None:
    durability = Durability(keyspaces(), MemoryStore())
    assert durability.barrier() is None
    await durability.close()


async def test_a_barrier_resolves_once_the_change_is_stored() -> None:
    ks, store = keyspaces(), SlowStore()
    durability = Durability(ks, store)
    lww_ops.write(ks, "k", "v", 1)
    barrier = durability.barrier()
    assert barrier is not None
    assert store.records == {}
    await barrier
    assert (LWW, "k") in store.records
    assert durability.barrier() is None
    await durability.close()


async def test_barriers_asked_between_two_commits_share_one_future() -> None:
    ks, store = keyspaces(), SlowStore(delay=0)
    durability = Durability(ks, store)
    lww_ops.write(ks, "a", "v", 1)
    first = durability.barrier()
    lww_ops.write(ks, "b", "v", 1)
    assert durability.barrier() is first
    assert first is not None
    await first
    lww_ops.write(ks, "c", "v", 1)
    assert durability.barrier() not in (None, first)
    await durability.close()


async def test_changes_of_one_turn_are_one_commit() -> None:
    ks, store = keyspaces(), SlowStore()
    durability = Durability(ks, store)
    for i in range(1000):
        mv_ops.write(ks, f"k{i}", i, None)
    barrier = durability.barrier()
    assert barrier is not None
    await barrier
    assert store.batch_sizes == [1000]
    await durability.close()


async def test_changes_during_a_commit_gather_for_the_next_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(durability_module, "MAX_IN_FLIGHT", 3)
    ks, store = keyspaces(), SlowStore(delay=0.01)
    durability = Durability(ks, store)
    barriers = []
    for i in range(300):  # one write per loop turn, while commits take 10 ms each
        kv_ops.put(ks, f"k{i}", i, (1,))
        barriers.append(durability.barrier())
        await asyncio.sleep(0)
    await asyncio.gather(*barriers)
    assert sum(store.batch_sizes) == 300
    assert len(store.batch_sizes) < 30, store.batch_sizes
    assert store.most_in_flight == 3  # commits follow each other without waiting, up to 3
    await durability.close()


async def test_a_failed_commit_fails_the_commits_started_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Their barriers promise that every change before them is durable: the failed ones are not."""
    monkeypatch.setattr(durability_module, "RETRY_AFTER_FAILURE_S", 0.01)
    monkeypatch.setattr(durability_module, "MAX_IN_FLIGHT", 2)
    ks, store = keyspaces(), SlowStore(delay=0.02)
    store.fail_keys = {"a"}
    durability = Durability(ks, store)
    lww_ops.write(ks, "a", "v", 1)
    first = durability.barrier()
    await asyncio.sleep(0)
    lww_ops.write(ks, "b", "v", 1)
    second = durability.barrier()
    await asyncio.sleep(0)
    assert store.in_flight == 2
    assert first is not None and second is not None and second is not first
    with pytest.raises(NotDurable, match="Input/output error"):
        await first
    with pytest.raises(NotDurable, match="an earlier commit failed"):
        await second  # its own commit went through, but the change to a did not
    assert store.records.keys() == {(LWW, "b")}
    store.fail_keys = set()
    later = durability.barrier()  # both keys are still to be stored
    assert later is not None
    await later
    assert store.records.keys() == {(LWW, "a"), (LWW, "b")}
    await durability.close()


async def test_a_key_changed_many_times_between_commits_is_stored_once() -> None:
    ks, store = keyspaces(), SlowStore()
    durability = Durability(ks, store)
    for i in range(50):
        lww_ops.write(ks, "k", i, i + 1)
    await durability.barrier()  # type: ignore[misc]
    assert store.batch_sizes == [1]
    await durability.close()


async def test_a_failed_commit_fails_its_barrier_and_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(durability_module, "RETRY_AFTER_FAILURE_S", 0.01)
    ks, store = keyspaces(), SlowStore()
    store.fail_with = OSError(28, "No space left on device")
    durability = Durability(ks, store)
    mvcc_ops.put(ks, "k", "v", 7)
    barrier = durability.barrier()
    assert barrier is not None
    with pytest.raises(NotDurable, match="No space left"):
        await barrier
    assert durability.failures >= 1
    store.fail_with = None
    later = durability.barrier()  # the failed key is still waiting to be stored
    assert later is not None
    await later
    assert (MVCC, "k") in store.records
    await durability.close()


async def test_async_mode_commits_after_the_flush_interval() -> None:
    ks, store = keyspaces(), SlowStore(delay=0)
    durability = Durability(ks, store, mode="async", flush_interval_ms=20)
    assert not durability.holds_replies
    lww_ops.write(ks, "k", "v", 1)
    await asyncio.sleep(0.005)
    assert store.records == {}
    await asyncio.sleep(0.05)
    assert (LWW, "k") in store.records
    await durability.close()


async def test_close_commits_what_is_still_dirty(tmp_path: Path) -> None:
    ks = keyspaces()
    durability = Durability(ks, LmdbStore(tmp_path), mode="async", flush_interval_ms=60_000)
    kv_ops.put(ks, "k", "v", (1,))
    await durability.close()
    store = LmdbStore(tmp_path)
    assert [(space, key) for space, key, _ in store.load_all()] == [(KV, "k")]
    store.close()


def test_durability_settings_are_checked() -> None:
    node = {"id": "n1", "host": "127.0.0.1", "port": 7001}
    config = parse_cluster(
        {"cluster": {"durability": "async", "flush_interval_ms": 5}, "nodes": [node]}
    )
    assert (config.durability, config.flush_interval_ms) == ("async", 5)
    assert parse_cluster({"nodes": [node]}).durability == "sync"
    with pytest.raises(ConfigError, match="durability must be"):
        parse_cluster({"cluster": {"durability": "fsync"}, "nodes": [node]})
    with pytest.raises(ConfigError, match="flush_interval_ms"):
        parse_cluster({"cluster": {"flush_interval_ms": 0}, "nodes": [node]})


# -- replies over TCP, in process ------------------------------------------------------------


async def serving(store: MemoryStore) -> tuple[Node, Any, JsonClient]:
    node = Node("n1", ["n1"])
    node.durability = Durability(node.keyspaces, store)
    server = await serve_tcp(node, LOOPBACK, 0)
    host, port = server.addresses[0]
    return node, server, await JsonClient.connect(host, port)


async def test_replies_wait_for_their_commit_and_keep_their_order() -> None:
    store = SlowStore(delay=0.02)
    node, server, client = await serving(store)
    try:
        ids = []
        for i in range(20):  # separate chunks: each one's replies wait on its own commit
            body = {"type": "mv_write", "key": f"k{i % 3}", "value": i, "msg_id": 100 + i}
            await client.send(body)
            ids.append(100 + i)
            if i % 4 == 0:
                await asyncio.sleep(0.005)
        replies = [await client.read_json() for _ in ids]
        assert [r["in_reply_to"] for r in replies] == ids
        assert all(r["type"] == "mv_write_ok" for r in replies)
        assert len(store.batch_sizes) < 20
        assert {key for _, key in store.records} == {"k0", "k1", "k2"}
    finally:
        await client.close()
        await server.close()
        assert node.durability is not None
        await node.durability.close()


async def test_a_write_that_cannot_be_stored_gets_error_13(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(durability_module, "RETRY_AFTER_FAILURE_S", 0.01)
    store = SlowStore()
    store.fail_with = OSError(28, "No space left on device")
    node, server, client = await serving(store)
    try:
        reply = await client.request({"type": "mv_write", "key": "k", "value": 1})
        assert reply["type"] == "error"
        assert reply["code"] == 13
        assert reply["text"].startswith("write not durable: ")
        merge = {"src": "n2", "dest": "n1", "body": {"type": "lww_merge", "msg_id": 9, "key": "x",
                 "state": {"value": 1, "timestamp": 1, "replica": "n2"}}}  # fmt: skip
        await client.send(merge)
        ack = await client.reply_to(9, envelope=True)
        assert ack["body"]["type"] == "error", ack  # a peer's merge is not acknowledged either
        bad = await client.request({"type": "mv_write", "key": "k"})
        assert bad["code"] == 12  # a request that changed nothing keeps its own error
    finally:
        await client.close()
        await server.close()
        store.fail_with = None
        assert node.durability is not None
        await node.durability.close()


# -- real processes ---------------------------------------------------------------------------


def durable_node(directory: Path, port: int) -> NodeProcess:
    config = directory / "cluster.toml"
    config.write_text(
        '[cluster]\ndurability = "sync"\n'
        f'[[nodes]]\nid = "n1"\nhost = "{LOOPBACK}"\nport = {port}\ndata_dir = "data/n1"\n'
    )
    return NodeProcess(config, "n1", LOOPBACK, port)


def write_body(kind: str, i: int) -> dict[str, Any]:
    key = f"{kind}-{i}"
    if kind == MV:
        return {"type": "mv_write", "key": key, "value": i}
    if kind == KV:
        return {"type": "kv_put", "key": key, "value": i, "clock": [1]}
    if kind == LWW:
        return {"type": "lww_write", "key": key, "value": i}
    return {"type": "mvcc_put", "key": key, "value": i}


async def pipelined_writes(
    node: NodeProcess, start: int, count: int, acked: list[tuple[str, int]] | None = None
) -> list[tuple[str, int]]:
    """Write `count` keys of each kind over 4 connections, 16 in flight.

    Returns the acknowledged writes, each appended to `acked` as its reply arrives.
    """
    acked = [] if acked is None else acked

    async def one_connection(lane: int) -> None:
        async with await node.connect() as client:
            pending: dict[int, tuple[str, int]] = {}
            for i in range(start + lane, start + count, 4):
                for kind in (MV, KV, LWW, MVCC):
                    msg_id = client.take_msg_id()
                    await client.send({**write_body(kind, i), "msg_id": msg_id})
                    pending[msg_id] = (kind, i)
                while len(pending) >= 16:
                    reply = await client.read_json()
                    ref = pending.pop(reply["in_reply_to"])
                    if reply["type"].endswith("_ok"):
                        acked.append(ref)
            while pending:
                reply = await client.read_json()
                ref = pending.pop(reply["in_reply_to"])
                if reply["type"].endswith("_ok"):
                    acked.append(ref)

    results = await asyncio.gather(
        *(one_connection(lane) for lane in range(4)), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return acked


def read_body(kind: str, i: int) -> dict[str, Any]:
    read_type = {MV: "mv_read", KV: "kv_get", LWW: "lww_read", MVCC: "mvcc_get"}[kind]
    return {"type": read_type, "key": f"{kind}-{i}"}


def holds(kind: str, i: int, reply: dict[str, Any]) -> bool:
    if kind == MV:
        return [v["value"] for v in reply["values"]] == [i]
    if kind == KV:
        return bool(reply["values"] == [{"value": i, "clock": [1]}])
    return bool(reply.get("value") == i)


async def assert_present(node: NodeProcess, acked: list[tuple[str, int]]) -> None:
    """Read every acknowledged write back, 256 requests in flight."""
    async with await node.connect() as client:
        for first in range(0, len(acked), 256):
            batch = acked[first : first + 256]
            for n, (kind, i) in enumerate(batch):
                await client.send({**read_body(kind, i), "msg_id": first + n})
            for n, (kind, i) in enumerate(batch):
                reply = await client.reply_to(first + n)
                assert holds(kind, i, reply), (kind, i, reply)


async def test_every_acknowledged_write_survives_kill_9(scratch_dir: Path) -> None:
    (port,) = free_ports(1)
    node = durable_node(scratch_dir, port)
    acked: list[tuple[str, int]] = []
    try:
        for round_ in range(3):
            node.start().wait_ready()
            await assert_present(node, acked)  # everything of the rounds before
            acked += await pipelined_writes(node, round_ * 1000, 200)
            node.kill()
        assert len(acked) == 3 * 200 * 4
        node.start().wait_ready()
        await assert_present(node, acked)
        assert "loaded 2400 keys in" in node.stderr_text()
    finally:
        node.stop()
        print(node.stderr_text())


async def test_kill_9_in_the_middle_of_a_write_load_loses_no_acknowledged_write(
    scratch_dir: Path,
) -> None:
    (port,) = free_ports(1)
    node = durable_node(scratch_dir, port)
    acked: list[tuple[str, int]] = []
    try:
        for round_ in range(3):
            node.start().wait_ready()
            await assert_present(node, acked)
            load = asyncio.ensure_future(pipelined_writes(node, round_ * 100_000, 100_000, acked))
            await asyncio.sleep(0.3 + random.random() * 0.3)
            node.kill()
            with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError, ValueError)):
                await load
        assert len(acked) > 100
        node.start().wait_ready()
        await assert_present(node, acked)
    finally:
        node.stop()
        print(node.stderr_text())


# -- incarnations -------------------------------------------------------------------------------


async def test_a_wiped_node_never_reuses_a_dot(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    store, (first_actor, _) = open_store(data, "n1")
    before = Keyspaces("n1", mvcc_retention_ms=0, actor=first_actor)
    mv_ops.write(before, "k", "old", None)
    store.close()
    peer = Keyspaces("n2", mvcc_retention_ms=0)
    peer.merge(registry.MV, "k", before.states["mv"]["k"])  # the old value reached n2

    for file in data.iterdir():  # the disk is wiped
        file.unlink()
    store, (second_actor, _) = open_store(data, "n1")
    store.close()
    assert second_actor != first_actor
    after = Keyspaces("n1", mvcc_retention_ms=0, actor=second_actor)
    _, sibling = mv_ops.write(after, "k", "new", None)  # no context: it has seen nothing
    assert sibling.dot != before.states["mv"]["k"].siblings[0].dot

    healed = after.states["mv"]["k"].merge(peer.states["mv"]["k"])
    assert sorted(healed.values()) == ["new", "old"]
    assert sorted(peer.states["mv"]["k"].merge(after.states["mv"]["k"]).values()) == ["new", "old"]


async def test_a_clean_close_keeps_the_dot_floor_for_the_next_start(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    store, (actor, _) = open_store(data, "n1")
    keyspaces = Keyspaces("n1", mvcc_retention_ms=0, actor=actor)
    keyspaces.dot_floor = 7  # as a collection of this actor's counters up to 7 leaves it
    durability = Durability(keyspaces, store)
    _, sibling = mv_ops.write(keyspaces, "k", "v", None)
    assert sibling.dot == (actor, 8)
    await durability.close()
    store, started = open_store(data, "n1")
    store.close()
    assert started == (actor, 7)


def test_without_fresh_actors_a_wipe_would_lose_a_write() -> None:
    """Why the actor changes: the same id after a wipe reissues dot [n1, 1] to another value."""
    old = MVRegister().write("n1", "old", None)[0]
    new = MVRegister().write("n1", "new", None)[0]
    assert old.siblings[0].dot == new.siblings[0].dot
    assert len(old.merge(new).values()) == 1


# -- two real nodes ------------------------------------------------------------------------------


def two_durable_nodes(directory: Path) -> dict[str, NodeProcess]:
    ports = free_ports(2)
    lines = ["[cluster]", "gossip_interval_ms = 50", ""]
    for node_id, port in zip(("n1", "n2"), ports, strict=True):
        lines += ["[[nodes]]", f'id = "{node_id}"', f'host = "{LOOPBACK}"', f"port = {port}"]
        lines += [f'data_dir = "data/{node_id}"', ""]
    config = directory / "cluster.toml"
    config.write_text("\n".join(lines))
    return {
        node_id: NodeProcess(config, node_id, LOOPBACK, port)
        for node_id, port in zip(("n1", "n2"), ports, strict=True)
    }


async def read_until(
    node: NodeProcess, body: dict[str, Any], done: Any, timeout: float = CONVERGE_TIMEOUT
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    async with await node.connect() as client:
        while True:
            reply = await client.request(body)
            if done(reply) or time.monotonic() > deadline:
                return reply
            await asyncio.sleep(0.05)


def mv_values(reply: dict[str, Any]) -> list[Any]:
    return sorted(v["value"] for v in reply["values"])


async def test_a_value_received_by_gossip_survives_kill_9_of_its_receiver(
    scratch_dir: Path,
) -> None:
    nodes = two_durable_nodes(scratch_dir)
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            node.wait_ready()
        async with await nodes["n1"].connect() as client:
            for i in range(50):
                await client.request({"type": "lww_write", "key": f"g{i}", "value": i})
        last = {"type": "lww_read", "key": "g49"}
        reply = await read_until(nodes["n2"], last, lambda r: r.get("value") == 49)
        assert reply.get("value") == 49, reply
        nodes["n2"].kill()
        nodes["n1"].stop()  # n2 comes back alone: what it has is what it stored
        nodes["n2"].start().wait_ready()
        async with await nodes["n2"].connect() as client:
            for i in range(50):  # n1 sent them in order, so everything up to g49 arrived
                reply = await client.request({"type": "lww_read", "key": f"g{i}"})
                assert reply.get("value") == i, reply
    finally:
        for node in nodes.values():
            node.stop()
            print(f"--- {node.node_id} ---\n{node.stderr_text()}")


async def test_a_wiped_node_writing_while_cut_off_keeps_both_values(scratch_dir: Path) -> None:
    nodes = two_durable_nodes(scratch_dir)
    n1, n2 = nodes["n1"], nodes["n2"]
    read = {"type": "mv_read", "key": "k"}
    try:
        n1.start()
        n2.start()
        n1.wait_ready()
        n2.wait_ready()
        async with await n1.connect() as client:
            first = await client.request({"type": "mv_write", "key": "k", "value": "old"})
        reply = await read_until(n2, read, lambda r: mv_values(r) == ["old"])
        assert mv_values(reply) == ["old"], reply

        n2.stop()  # cut off
        n1.kill()
        wait_unlocked(scratch_dir / "data" / "n1")  # its log writer has gone too
        for file in (scratch_dir / "data" / "n1").iterdir():  # n1's disk is wiped
            file.unlink()
        n1.start().wait_ready()
        async with await n1.connect() as client:
            second = await client.request({"type": "mv_write", "key": "k", "value": "new"})
        assert second["values"][0]["dot"] != first["values"][0]["dot"]

        n2.start().wait_ready()  # the heal
        for node in (n1, n2):
            reply = await read_until(node, read, lambda r: mv_values(r) == ["new", "old"])
            assert mv_values(reply) == ["new", "old"], (node.node_id, reply)
    finally:
        for node in nodes.values():
            node.stop()
            print(f"--- {node.node_id} ---\n{node.stderr_text()}")


async def test_status_reports_the_actor_and_the_commits() -> None:
    node = Node("n1", ["n1"], actor="n1~0a0b0c")
    assert node.handle_body({"type": "status"}, None)["durability"] == {"mode": "memory"}
    node.durability = Durability(node.keyspaces, MemoryStore())
    node.handle_body({"type": "mv_write", "key": "k", "value": 1}, None)
    await node.durability.barrier()  # type: ignore[misc]
    status = node.handle_body({"type": "status"}, None)
    assert status is not None
    assert status["actor"] == "n1~0a0b0c"
    assert status["durability"] == {
        "mode": "sync", "disk": "ok", "oldest_commit_ms": 0, "commit_timeout_ms": 5000,
        "commits": 1, "keys_committed": 1, "commits_in_flight": 0, "failures": 0,
        "timeouts": 0, "last_error": None,
    }  # fmt: skip
    await node.durability.close()


async def test_a_full_lmdb_map_fails_commits_once_a_checkpoint_fails(tmp_path: Path) -> None:
    """The log takes the commit; while checkpoints cannot write LMDB, a log past its bound
    (four segments) stops the next ones."""
    ks = keyspaces()
    store = LmdbStore(
        tmp_path, map_size=256 * 1024, segment_bytes=64 * 1024, checkpoint_interval_s=0.2
    )
    durability = Durability(ks, store)
    for i in range(2000):
        lww_ops.write(ks, f"k{i}", "x" * 200, i + 1)
    await durability.barrier()  # type: ignore[misc]
    deadline = time.monotonic() + 30  # the full segment wakes a checkpoint, in the checkpointer
    while store.status()["checkpoint_failures"] == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    status = store.status()
    assert status["checkpoints"] == 0 and status["checkpoint_failures"] >= 1
    assert "MapFullError" in status["last_checkpoint"]["error"]
    lww_ops.write(ks, "late", "x", 1)
    barrier = durability.barrier()
    assert barrier is not None
    with pytest.raises(NotDurable, match="MapFullError"):
        await barrier
    await durability.close()
    store = LmdbStore(tmp_path)  # a map large enough: the log kept every acknowledged write
    try:
        assert {key for _, key, _ in store.load_all()} == {f"k{i}" for i in range(2000)}
    finally:
        store.close()


async def test_the_log_writer_and_checkpointer_go_when_their_node_is_killed(
    scratch_dir: Path,
) -> None:
    """And nothing acknowledged is lost, though they were working when it died."""
    (port,) = free_ports(1)
    node = durable_node(scratch_dir, port)
    data_dir = (scratch_dir / "data" / "n1").resolve()
    none: dict[str, list[int]] = {
        "replica.durable.log_writer": [],
        "replica.durable.checkpointer": [],
    }
    try:
        node.start().wait_ready()
        acked = await pipelined_writes(node, 0, 200)

        async def helpers() -> dict[str, list[int]]:
            return helper_pids(data_dir)

        def one_each(found: dict[str, list[int]]) -> bool:
            return all(len(pids) == 1 for pids in found.values())

        # the checkpointer starts with the first checkpoint, within 5 s
        await eventually(helpers, one_each, "one log writer and one checkpointer", 20)
        acked += await pipelined_writes(node, 1000, 200)
        node.kill()
        await eventually(helpers, lambda found: found == none, "no helper outliving its node", 20)
        node.start().wait_ready()
        await assert_present(node, acked)
        # a clean stop ends them too, once the writer's closing checkpoint is done
        assert node.stop(timeout=60) == 0
        await eventually(helpers, lambda found: found == none, "no helper after a clean stop", 20)
    finally:
        node.stop()


async def test_a_killed_log_writer_fails_its_commits_and_a_new_one_takes_over(
    scratch_dir: Path,
) -> None:
    (port,) = free_ports(1)
    node = durable_node(scratch_dir, port)
    data_dir = (scratch_dir / "data" / "n1").resolve()
    try:
        node.start().wait_ready()
        acked = await pipelined_writes(node, 0, 100)
        (writer,) = helper_pids(data_dir)["replica.durable.log_writer"]
        os.kill(writer, signal.SIGKILL)
        deadline = time.monotonic() + 20
        replies: list[dict[str, Any]] = []
        async with await node.connect() as client:
            while time.monotonic() < deadline:  # until writes are durable again
                reply = await client.request({"type": "lww_write", "key": "after", "value": 1})
                replies.append(reply)
                if reply["type"] == "lww_write_ok":
                    break
                assert reply["code"] == 13, reply  # not durable: an error, never an ack
                await asyncio.sleep(0.05)
        assert replies[-1]["type"] == "lww_write_ok", replies
        (successor,) = helper_pids(data_dir)["replica.durable.log_writer"]
        assert successor != writer
        async with await node.connect() as client:
            status = await client.request({"type": "status"})
            assert status["durability"]["log_writer_restarts"] == 1, status
        acked += await pipelined_writes(node, 1000, 100)
        node.kill()
        node.start().wait_ready()
        await assert_present(node, acked)
        async with await node.connect() as client:
            assert (await client.request({"type": "lww_read", "key": "after"}))["value"] == 1
    finally:
        node.stop()
        print(node.stderr_text())


def pipe_bytes(reader_pid: int) -> int:
    """How many bytes wait in the pipe a process reads as its standard input."""
    fd = os.open(f"/proc/{reader_pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    finally:
        os.close(fd)


def blocked_in(pid: int) -> str:
    """Where in the kernel a process's main thread waits (`/proc/PID/wchan`)."""
    return Path(f"/proc/{pid}/wchan").read_text()


async def test_writes_wait_for_a_stalled_log_writer_and_lose_nothing(scratch_dir: Path) -> None:
    """A stopped writer fills the pipe; the node keeps what the pipe cannot take, and serves on."""
    (port,) = free_ports(1)
    node = durable_node(scratch_dir, port)
    data_dir = (scratch_dir / "data" / "n1").resolve()
    value, count = "v" * 30_000, 400  # 12 MB of commits: many times what a pipe holds
    try:
        node.start().wait_ready()
        (writer,) = helper_pids(data_dir)["replica.durable.log_writer"]
        os.kill(writer, signal.SIGSTOP)
        try:
            async with await node.connect() as client:
                for i in range(count):
                    body = {"type": "lww_write", "key": f"s{i}", "value": value, "msg_id": i}
                    await client.send(body)
                deadline = time.monotonic() + 20
                while pipe_bytes(writer) < 60_000 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                assert pipe_bytes(writer) >= 60_000  # full: the rest waits in the node
                assert "pipe" not in blocked_in(node.pid), blocked_in(node.pid)
                await client.send({"type": "status", "msg_id": -1})
                os.kill(writer, signal.SIGCONT)
                replies = [await client.read_json() for _ in range(count + 1)]
        finally:
            os.kill(writer, signal.SIGCONT)
        assert [r["in_reply_to"] for r in replies] == [*range(count), -1]
        assert {r["type"] for r in replies[:-1]} == {"lww_write_ok"}
        assert replies[-1]["durability"]["failures"] == 0
        assert replies[-1]["durability"]["log_writer_restarts"] == 0
        node.kill()
        node.start().wait_ready()
        async with await node.connect() as client:
            for i in (0, count // 2, count - 1):
                reply = await client.request({"type": "lww_read", "key": f"s{i}"})
                assert reply["value"] == value, reply
    finally:
        node.stop()
        print(node.stderr_text())
