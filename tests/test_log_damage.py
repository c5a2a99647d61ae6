"""Damage to the commit log is never silent, and no dot is reissued after an unclean stop.

Real `replica serve` processes over loopback, killed with SIGKILL, their log
segments then flipped, cut, deleted or torn on disk as a failing disk or an
operator would: a damaged log stops the node with exit 2 and one line naming
the file; a torn tail (a write never acknowledged) is cut with a WARNING;
every start after an unclean stop writes under a new actor; a dead
checkpointer is replaced without refusing a write; a small disk is enough.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from replica.crdt.lww import LWWRegister
from replica.durable.commit_log import HEADER, frame, parse, segment_name
from replica.durable.durability import Durability
from replica.durable.errors import StorageError
from replica.durable.lmdb_store import LmdbStore
from replica.durable.log_manifest import MANIFEST, load_manifest
from replica.durable.records import encode_commit
from replica.durable.store import open_store
from replica.keyspaces import Keyspaces
from replica.node.handlers import mv as mv_ops
from replica.testing import helper_pids
from tests.harness import (
    LOOPBACK,
    START_TIMEOUT,
    STOP_TIMEOUT,
    NodeProcess,
    eventually,
    free_ports,
    replica_command,
    wait_unlocked,
)
from tests.names import LWW

KEYS = 60


def durable_config(directory: Path, data_dir: Path | str = "data/n1") -> tuple[Path, int]:
    (port,) = free_ports(1)
    config = directory / "cluster.toml"
    config.write_text(
        '[cluster]\ndurability = "sync"\n'
        f'[[nodes]]\nid = "n1"\nhost = "{LOOPBACK}"\nport = {port}\ndata_dir = "{data_dir}"\n'
    )
    return config, port


@contextlib.contextmanager
def durable_node(directory: Path, data_dir: Path | str = "data/n1") -> Iterator[NodeProcess]:
    config, port = durable_config(directory, data_dir)
    node = NodeProcess(config, "n1", LOOPBACK, port)
    try:
        yield node
    finally:
        node.stop()
        print(f"--- n1 ---\n{node.stderr_text()}")


def serve_once(config: Path, port: int) -> subprocess.CompletedProcess[str]:
    """A node expected to refuse its data dir: how it exited; fails if it listens instead."""
    command = replica_command("serve", "--config", str(config), "--node", "n1")
    process = subprocess.Popen(
        command, cwd=config.parent, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None:
            with contextlib.suppress(OSError):
                socket.create_connection((LOOPBACK, port), timeout=0.5).close()
                raise AssertionError("the node started on a damaged data dir")
            assert time.monotonic() < deadline, "the node neither exited nor listened"
            time.sleep(0.02)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=STOP_TIMEOUT)
    return subprocess.CompletedProcess(command, process.returncode, "", stderr)


async def write_keys(node: NodeProcess, count: int = KEYS, prefix: str = "k") -> None:
    async with await node.connect() as client:
        for i in range(count):
            reply = await client.request({"type": "lww_write", "key": f"{prefix}{i}", "value": i})
            assert reply["type"] == "lww_write_ok", reply


async def read_keys(node: NodeProcess, count: int = KEYS, prefix: str = "k") -> list[Any]:
    async with await node.connect() as client:
        return [
            (await client.request({"type": "lww_read", "key": f"{prefix}{i}"})).get("value")
            for i in range(count)
        ]


async def status(node: NodeProcess) -> dict[str, Any]:
    async with await node.connect() as client:
        return await client.request({"type": "status"})


def killed(node: NodeProcess, data_dir: Path) -> None:
    """SIGKILL the node, then wait for its log writer to let the data dir go."""
    node.kill()
    wait_unlocked(data_dir)


def newest_written_segment(data_dir: Path) -> tuple[Path, int, list[bytes]]:
    """The newest segment holding records: its path, where they end, and their payloads."""
    for seq in sorted(load_manifest(data_dir).segments, reverse=True):  # type: ignore[union-attr]
        path = data_dir / segment_name(seq)
        payloads, end = parse(path.read_bytes())
        if payloads:
            return path, end, payloads
    raise AssertionError(f"no segment with records in {sorted(os.listdir(data_dir))}")


async def keys_written_then_killed(node: NodeProcess, data_dir: Path) -> None:
    node.start().wait_ready()
    await write_keys(node)
    killed(node, data_dir)


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replica: storage error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result.stderr


# -- damage stops the node ---------------------------------------------------------------------


async def test_a_flipped_byte_in_the_last_record_stops_the_node(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data" / "n1"
    with durable_node(scratch_dir) as node:
        await keys_written_then_killed(node, data_dir)
    path, end, payloads = newest_written_segment(data_dir)
    data = bytearray(path.read_bytes())
    data[end - 2] ^= 0x01  # inside the last record's payload: every byte of it is there
    path.write_bytes(bytes(data))
    start = end - HEADER.size - len(payloads[-1])
    result = serve_once(node.config, node.port)
    assert_refused(result, path.name, f"damaged last record at byte {start}")
    assert path.read_bytes() == bytes(data)  # left as it was, for whoever looks into it


async def test_a_truncated_newest_segment_stops_the_node(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data" / "n1"
    with durable_node(scratch_dir) as node:
        await keys_written_then_killed(node, data_dir)
    path, end, _ = newest_written_segment(data_dir)
    os.truncate(path, end // 2)  # half its acknowledged records gone
    result = serve_once(node.config, node.port)
    assert_refused(result, path.name, f"is {end // 2} bytes", "it was truncated")


async def test_a_deleted_newest_segment_stops_the_node(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data" / "n1"
    with durable_node(scratch_dir) as node:
        await keys_written_then_killed(node, data_dir)
    path, _, _ = newest_written_segment(data_dir)
    path.unlink()
    result = serve_once(node.config, node.port)
    assert_refused(result, f"log segment {path.name} is listed in {MANIFEST} but missing")


async def test_a_damaged_manifest_stops_the_node(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data" / "n1"
    with durable_node(scratch_dir) as node:
        await keys_written_then_killed(node, data_dir)
    manifest = data_dir / MANIFEST
    data = bytearray(manifest.read_bytes())
    data[-3] ^= 0x01
    manifest.write_bytes(bytes(data))
    assert_refused(serve_once(node.config, node.port), f"the log manifest {MANIFEST}")
    manifest.unlink()
    result = serve_once(node.config, node.port)
    assert_refused(result, f"the log manifest {MANIFEST} is missing")


async def test_salvage_starts_a_damaged_log_under_a_new_actor_saying_what_it_cut(
    scratch_dir: Path,
) -> None:
    data_dir = scratch_dir / "data" / "n1"
    with durable_node(scratch_dir) as node:
        node.start().wait_ready()
        before = (await status(node))["actor"]
        await write_keys(node)
        killed(node, data_dir)
        path, end, payloads = newest_written_segment(data_dir)
        data = bytearray(path.read_bytes())
        data[end - 2] ^= 0x01
        path.write_bytes(bytes(data))
        assert serve_once(node.config, node.port).returncode == 2  # never by default
        start = end - HEADER.size - len(payloads[-1])
        node.start("--salvage")
        node.wait_ready()
        log = node.stderr_text()
        assert re.search(
            rf"ERROR.*salvage: log segment {path.name}: cut {end - start} damaged bytes"
            rf" at byte {start}",
            log,
        ), log
        after = (await status(node))["actor"]
        assert after != before and after.startswith("n1~"), (before, after)
        values = await read_keys(node)
        assert values[:-1] == list(range(KEYS - 1))  # only the damaged last write is gone


# -- a torn tail is cut, with a warning --------------------------------------------------------


async def test_a_torn_tail_is_cut_with_a_warning_and_the_node_starts(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data" / "n1"
    with durable_node(scratch_dir) as node:
        await keys_written_then_killed(node, data_dir)
        path, end, _ = newest_written_segment(data_dir)
        late = encode_commit({(LWW, "late"): LWWRegister(9, 1, "n1")})
        never_acknowledged = frame([late])[:-7]  # a write the crash cut short
        with path.open("r+b") as file:
            file.seek(end)
            file.write(never_acknowledged)
        node.start().wait_ready()
        assert await read_keys(node) == list(range(KEYS))
        log = node.stderr_text()
        expected = (
            f"WARNING.*log segment {path.name}: cut a torn tail of"
            f" {len(never_acknowledged)} bytes at byte {end}"
        )
        assert re.search(expected, log), log


# -- incarnations ------------------------------------------------------------------------------


async def test_kill_9_then_restart_writes_under_a_new_actor(scratch_dir: Path) -> None:
    data_dir = scratch_dir / "data" / "n1"
    with durable_node(scratch_dir) as node:
        node.start().wait_ready()
        before = (await status(node))["actor"]
        await write_keys(node, 5)
        killed(node, data_dir)
        node.start().wait_ready()
        after = (await status(node))["actor"]
        assert after != before and after.startswith("n1~"), (before, after)
        assert f"unclean stop: continuing as actor {after} (was {before})" in node.stderr_text()
        async with await node.connect() as client:
            reply = await client.request({"type": "mv_write", "key": "m", "value": "after"})
        assert [sibling["dot"] for sibling in reply["values"]] == [[after, 1]], reply
        killed(node, data_dir)  # and a third life is neither of the two before it
        node.start().wait_ready()
        third = (await status(node))["actor"]
        assert third not in (before, after)
        assert await read_keys(node, 5) == list(range(5))


async def test_a_clean_stop_then_restart_keeps_the_actor(scratch_dir: Path) -> None:
    with durable_node(scratch_dir) as node:
        node.start().wait_ready()
        before = (await status(node))["actor"]
        await write_keys(node, 5)
        assert node.stop(timeout=60) == 0  # SIGTERM: a clean stop
        node.start().wait_ready()
        assert (await status(node))["actor"] == before
        assert "unclean stop" not in node.stderr_text()
        async with await node.connect() as client:
            reply = await client.request({"type": "mv_write", "key": "m", "value": 1})
        assert reply["values"][0]["dot"][0] == before


def test_an_incarnation_is_clean_only_after_a_close_that_checkpointed(tmp_path: Path) -> None:
    data = tmp_path / "n1"
    store, (first, _) = open_store(data, "n1")
    store.close()
    store, (second, _) = open_store(data, "n1")
    assert second == first
    assert isinstance(store, LmdbStore)
    with store.env.begin() as txn:
        assert txn.get(b"clean", db=store.env.open_db(b"meta", txn=txn)) == b"0"  # while it runs
    store.close()
    store = LmdbStore(data)  # a tool that opens the store is not an incarnation
    store.close()
    store, (third, _) = open_store(data, "n1")
    assert third == first
    store.close()


async def test_a_close_that_leaves_writes_not_durable_is_no_clean_stop(tmp_path: Path) -> None:
    """In "async" mode such writes were acknowledged, and may be at peers with their dots."""
    data = tmp_path / "n1"
    store, (first, _) = open_store(data, "n1")
    keyspaces = Keyspaces("n1", mvcc_retention_ms=0, actor=first)
    durability = Durability(keyspaces, FailingStore(store), mode="async", flush_interval_ms=10_000)
    mv_ops.write(keyspaces, "k", "acknowledged at once", None)
    await durability.close()  # its one commit fails: the write never reached disk
    store, (second, _) = open_store(data, "n1")
    store.close()
    assert second != first


class FailingStore:
    """A real store whose commits all fail (as on a disk that refuses every write)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def submit(self, record: bytes, done: Any) -> None:
        asyncio.get_running_loop().call_soon(done, "OSError: [Errno 28] No space left on device")


# -- a dead checkpointer -----------------------------------------------------------------------


def checkpointer_busy(pid: int) -> bool:
    """Whether a checkpointer is doing anything but waiting for its next request."""
    try:
        return "pipe_read" not in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


async def test_writes_are_acknowledged_while_the_checkpointer_is_killed(
    scratch_dir: Path,
) -> None:
    """Killed in the middle of checkpoints: a new one takes over, no write gets error 13."""
    data_dir = (scratch_dir / "data" / "n1").resolve()
    with durable_node(scratch_dir) as node:
        node.start().wait_ready()
        stop = asyncio.Event()
        failures: list[dict[str, Any]] = []
        written = [0]

        async def lane(n: int) -> None:
            async with await node.connect() as client:
                i = 0
                while not stop.is_set():
                    body = {"type": "lww_write", "key": f"c{n}-{i % 5000}", "value": "v" * 1000}
                    reply = await client.request(body)
                    if reply["type"] != "lww_write_ok":
                        failures.append(reply)
                    written[0] += 1
                    i += 1

        lanes = [asyncio.ensure_future(lane(n)) for n in range(4)]
        kills: list[int] = []
        try:
            deadline = time.monotonic() + 40
            while len(kills) < 2 and time.monotonic() < deadline and not failures:
                for pid in helper_pids(data_dir)["replica.durable.checkpointer"]:
                    if pid not in kills and checkpointer_busy(pid):
                        os.kill(pid, signal.SIGKILL)
                        kills.append(pid)
                await asyncio.sleep(0.005)
            assert failures == [], failures[:3]
            assert len(kills) == 2, "no checkpoint seen running to kill"
            before = (await status(node))["durability"]["checkpoints"]
            await eventually(
                lambda: status(node),
                lambda seen: seen["durability"]["checkpoints"] > before,
                "a checkpoint after the kills",
                20,
            )
        finally:
            stop.set()
            await asyncio.gather(*lanes, return_exceptions=True)
        assert failures == [], failures[:3]
        assert written[0] > 100
        log = node.stderr_text()
        assert "starting a new checkpointer" in log, log


# -- a small disk ------------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(scratch_dir: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs, mounted for the test (skipped where mounting is refused)."""
    mount = scratch_dir / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is refused here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_durable_node_starts_and_writes_on_a_24_mib_filesystem(
    scratch_dir: Path, small_filesystem: Path
) -> None:
    data_dir = small_filesystem / "n1"
    with durable_node(scratch_dir, data_dir) as node:
        node.start().wait_ready()
        await write_keys(node, 500)
        killed(node, data_dir)  # a restart reads back the log it wrote there
        node.start().wait_ready()
        assert await read_keys(node, 500) == list(range(500))
        assert node.stop(timeout=60) == 0
        wait_unlocked(data_dir)


def fill(path: Path) -> None:
    """Write zeros to `path` until its filesystem has no room left."""
    chunk = bytes(1 << 16)
    with path.open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(chunk)


async def test_a_full_disk_fails_writes_but_reads_and_status_answer_until_there_is_room(
    scratch_dir: Path, small_filesystem: Path
) -> None:
    """A write on a full disk gets error 13; reads, status and the node go on; room heals it."""
    data_dir = small_filesystem / "n1"
    big = "x" * 200_000
    with durable_node(scratch_dir, data_dir) as node:
        node.start().wait_ready()
        await write_keys(node, 20)
        fill(small_filesystem / "filler")
        async with await node.connect() as client:
            failed = None
            for i in range(200):  # past whatever zeros the segment still has
                reply = await client.request({"type": "lww_write", "key": f"big{i}", "value": big})
                if reply["type"] == "error":
                    failed = reply
                    break
            assert failed is not None, "every write was acknowledged on a full disk"
            assert failed["code"] == 13 and "not durable" in failed["text"], failed
            shown = await client.request({"type": "status"})
            assert shown["type"] == "status_ok", shown
            assert shown["durability"]["disk"] == "failing", shown["durability"]
            assert (await client.request({"type": "lww_read", "key": "k3"}))["value"] == 3
        (small_filesystem / "filler").unlink()
        await eventually(
            lambda: status(node),
            lambda seen: seen["durability"]["disk"] == "ok",
            "the node commits again once the disk has room",
            20,
        )
        await write_keys(node, 5, prefix="after")
        assert node.stop(timeout=60) == 0
        wait_unlocked(data_dir)
        node.start().wait_ready()
        assert await read_keys(node, 20) == list(range(20))
        assert await read_keys(node, 5, prefix="after") == list(range(5))


# -- sealed segments ---------------------------------------------------------------------------


def sealed_log(data_dir: Path) -> tuple[Path, bytes]:
    """A closed store whose manifest lists one sealed segment no checkpoint has taken."""
    LmdbStore(data_dir).close()
    records = [encode_commit({(LWW, f"k{i}"): LWWRegister(i, 1, "n1")}) for i in range(5)]
    data = frame(records)
    path = data_dir / segment_name(1)
    path.write_bytes(data + bytes(4096))
    manifest = load_manifest(data_dir)
    assert manifest is not None
    manifest.add(1, 0)
    manifest.seal(1, len(data))
    manifest.save(data_dir)
    return path, data


def test_a_sealed_segment_loads_to_its_recorded_length(tmp_path: Path) -> None:
    sealed_log(tmp_path)
    store = LmdbStore(tmp_path)
    try:
        assert {key for _, key, _ in store.load_all()} == {f"k{i}" for i in range(5)}
    finally:
        store.close()


def test_a_sealed_segment_shorter_than_its_records_is_refused(tmp_path: Path) -> None:
    path, data = sealed_log(tmp_path)
    os.truncate(path, len(data) - 5)
    expected = f"{path.name} is {len(data) - 5} bytes, shorter than the {len(data)} bytes"
    with pytest.raises(StorageError, match=expected):
        LmdbStore(tmp_path)


def test_a_sealed_segment_whose_last_record_is_zeroed_is_refused(tmp_path: Path) -> None:
    """Zeros where a sealed record was would read as a torn tail without its recorded length."""
    path, data = sealed_log(tmp_path)
    last = len(frame([parse(data)[0][-1]]))
    path.write_bytes(data[:-last] + bytes(last + 4096))
    with pytest.raises(StorageError, match=f"{path.name} has a damaged record at byte"):
        LmdbStore(tmp_path)


def test_salvage_forgets_a_missing_segment_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = sealed_log(tmp_path)
    path.unlink()
    with pytest.raises(StorageError, match=f"{path.name} is listed in {MANIFEST} but missing"):
        LmdbStore(tmp_path)
    store = LmdbStore(tmp_path, salvage=True)
    try:
        assert list(store.load_all()) == []
    finally:
        store.close()
    assert f"salvage: log segment {path.name} is listed in {MANIFEST} but missing" in caplog.text
    LmdbStore(tmp_path).close()  # the manifest no longer lists it: a plain start takes it
