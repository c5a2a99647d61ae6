"""A damaged LMDB data file is never silent: exit 2 and one line, or `--salvage` and a warning.

Real `replica serve` processes over real files: a node is filled and stopped
cleanly (which checkpoints every key into data.mdb), the file is damaged as
a disk or an operator would, and the node is started over it again.
"""

from __future__ import annotations

import os
import random
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest

from replica.crdt.lww import LWWRegister
from replica.durable.errors import DamagedRecord, DamagedStore, StorageError
from replica.durable.lmdb_file import META, P_BRANCH, P_LEAF, check_data_file
from replica.durable.records import (
    CRC_RESIDUE,
    TYPE_TAGS,
    VALUE_VERSION,
    decode_state,
    encode_stored,
    log_entries,
)
from tests.harness import LOOPBACK, NodeProcess, free_ports, replica_command, write_cluster
from tests.names import LWW, MV

KEYS = 4000
FILLER = "x" * 300  # 4000 keys of this make a data.mdb of about 2 MB
SERVE_TIMEOUT = 60.0
PAGE = 4096


# -- the value checksum ----------------------------------------------------------------------


def encode_state(keyspace: str, key: str, state: Any) -> bytes:
    """A state's LMDB value, as a checkpoint writes it."""
    return encode_stored(keyspace, key, state.to_stored())


def test_a_value_ends_with_the_crc_of_everything_before_it() -> None:
    data = encode_state(LWW, "k", LWWRegister("v", 1, "n1"))
    assert data[:2] == bytes([TYPE_TAGS[LWW], VALUE_VERSION])
    assert data[-4:] == zlib.crc32(data[:-4]).to_bytes(4, "little")
    assert zlib.crc32(data) == CRC_RESIDUE
    assert orjson.loads(data[2:-4]) == ["k", {"value": "v", "timestamp": 1, "replica": "n1"}]


def test_a_changed_digit_in_a_value_fails_its_checksum() -> None:
    data = encode_state(LWW, "k", LWWRegister(12345, 1, "n1"))
    at = data.index(b"12345") + 2
    damaged = data[:at] + b"4" + data[at + 1 :]
    assert orjson.loads(damaged[2:-4])  # still valid JSON: only the checksum tells
    with pytest.raises(DamagedRecord, match="fails its checksum"):
        decode_state(LWW, damaged)


@pytest.mark.parametrize("position", range(0, 60, 3))
def test_any_changed_byte_of_a_value_is_refused(position: int) -> None:
    data = encode_stored(MV, "key", [["value", "n1~abcdef", 7, {"n2": 3}]])
    damaged = bytearray(data)
    damaged[position % len(data)] ^= 0x10
    with pytest.raises(StorageError):
        decode_state(MV, bytes(damaged))


def test_a_value_without_a_checksum_is_refused() -> None:
    state = LWWRegister({"a": [1]}, 7, "n1")
    older = bytes([TYPE_TAGS[LWW], 1]) + orjson.dumps(["k", state.to_wire()])
    with pytest.raises(StorageError, match="unknown format version 1"):
        decode_state(LWW, older)


def test_a_log_record_of_one_key_is_refused() -> None:
    state = LWWRegister(3, 1, "n1")
    with pytest.raises(StorageError, match="not a batch"):
        log_entries(encode_state(LWW, "k", state))


# -- the data file's meta pages --------------------------------------------------------------


def lmdb_workload(path: Path, seed: int, transactions: int) -> Iterator[Path]:
    """Random puts and deletes of mixed sizes; yields data.mdb after each transaction."""
    rng = random.Random(seed)
    env = lmdb.open(str(path), map_size=1 << 30, max_dbs=4)
    try:
        dbs = [env.open_db(name) for name in (b"a", b"b")]
        for _ in range(transactions):
            with env.begin(write=True) as txn:
                for _ in range(rng.randint(1, 300)):
                    db = rng.choice(dbs)
                    key = b"k%d" % rng.randint(0, 2000)
                    if rng.random() < 0.5:
                        txn.put(key, rng.randbytes(rng.choice([10, 100, 3000, 20000])), db=db)
                    else:
                        txn.delete(key, db=db)
            yield path / "data.mdb"
    finally:
        env.close()


def newest_meta_end(data_file: Path) -> tuple[int, int]:
    """(file size, end of the newest meta's last page), read as `replica.durable.lmdb_file` does."""
    raw = data_file.read_bytes()
    page_size = META.unpack_from(raw)[5]
    metas = [META.unpack_from(raw, 0), META.unpack_from(raw, page_size)]
    newest = max(metas, key=lambda meta: meta[8])
    return len(raw), (newest[7] + 1) * page_size


def test_every_file_lmdb_writes_passes_and_one_ending_before_its_last_page_too(
    tmp_path: Path,
) -> None:
    ended_early = 0
    for data_file in lmdb_workload(tmp_path, seed=24, transactions=14):
        check_data_file(data_file)
        size, end = newest_meta_end(data_file)
        ended_early += size < end
    # pages one transaction allocated and freed are never written (LMDB's comment on mm_last_pg)
    assert ended_early >= 1


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_data_file_cut_short_is_refused_before_lmdb_maps_it(tmp_path: Path, seed: int) -> None:
    *_, data_file = lmdb_workload(tmp_path, seed=seed, transactions=20)
    whole = data_file.read_bytes()
    for cut in (1, 4096, 8191, 8192, len(whole) // 2, len(whole) - 5 * 4096):
        data_file.write_bytes(whole[:cut])
        with pytest.raises(DamagedStore, match="cut short"):
            check_data_file(data_file)


def test_an_empty_data_file_and_damaged_meta_pages_are_refused(tmp_path: Path) -> None:
    *_, data_file = lmdb_workload(tmp_path, seed=4, transactions=3)
    whole = data_file.read_bytes()
    data_file.write_bytes(b"")
    with pytest.raises(DamagedStore, match="is empty"):
        check_data_file(data_file)
    for offset, complaint in ((16, "meta page 0"), (4096 + 16, "meta page 1"), (20, "version")):
        damaged = bytearray(whole)
        damaged[offset] ^= 0xFF
        data_file.write_bytes(bytes(damaged))
        with pytest.raises(DamagedStore, match=complaint):
            check_data_file(data_file)


# -- real nodes over damaged files -----------------------------------------------------------


class Cluster:
    """A one-node cluster file in `directory`, its node n1 durable in data/n1."""

    def __init__(self, directory: Path) -> None:
        (self.port,) = free_ports(1)
        self.config = write_cluster(directory, ["n1"], ports=[self.port])
        self.data = directory / "data" / "n1"
        self.data_file = self.data / "data.mdb"

    def node(self, *extra: str) -> NodeProcess:
        return NodeProcess(self.config, "n1", LOOPBACK, self.port, extra_args=extra)

    def serve_once(self) -> subprocess.CompletedProcess[str]:
        """`replica serve` over the data dir, for a start that must fail."""
        return subprocess.run(
            replica_command("serve", "--config", str(self.config), "--node", "n1"),
            cwd=self.config.parent,
            capture_output=True,
            text=True,
            timeout=SERVE_TIMEOUT,
        )


def value_of(i: int) -> str:
    return f"value-{i:06d}-{FILLER}"


async def fill(node: NodeProcess, keys: int = KEYS) -> None:
    """`keys` LWW keys, 200 requests in flight, every write acknowledged."""
    async with await node.connect() as client:
        for first in range(0, keys, 200):
            batch = range(first, min(first + 200, keys))
            for i in batch:
                body = {"type": "lww_write", "key": f"k{i}", "value": value_of(i), "msg_id": i}
                await client.send(body)
            for i in batch:
                reply = await client.reply_to(i)
                assert reply["type"] == "lww_write_ok", reply


async def read_values(node: NodeProcess, keys: int = KEYS) -> dict[int, Any]:
    """{i: the value of k<i>} of every key that has one."""
    values = {}
    async with await node.connect() as client:
        for first in range(0, keys, 200):
            batch = range(first, min(first + 200, keys))
            for i in batch:
                await client.send({"type": "lww_read", "key": f"k{i}", "msg_id": i})
            for i in batch:
                reply = await client.reply_to(i)
                if reply.get("value") is not None:
                    values[i] = reply["value"]
    return values


async def actor_of(node: NodeProcess) -> str:
    async with await node.connect() as client:
        reply = await client.request({"type": "status"})
    return str(reply["actor"])


@pytest.fixture
async def filled(tmp_path: Path) -> Cluster:
    """A cluster whose node wrote KEYS keys and stopped cleanly: data.mdb holds them all."""
    cluster = Cluster(tmp_path)
    node = cluster.node()
    try:
        node.start().wait_ready()
        await fill(node)
        assert node.stop() == 0, node.stderr_text()
    finally:
        node.stop()
    assert cluster.data_file.stat().st_size > 3 << 19  # 1.5 MB: a cut to 1 MB takes pages
    return cluster


def assert_refused(result: subprocess.CompletedProcess[str], data_file: Path, what: str) -> None:
    """Exit 2 and one line naming the data file and what is wrong; no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replica: storage error: "), result.stderr
    assert str(data_file) in lines[0], result.stderr
    assert what in lines[0], result.stderr


def change_a_digit(data_file: Path, i: int) -> bytes:
    """Turn the digits of key k<i>'s value into another number in data.mdb; returns them."""
    raw = bytearray(data_file.read_bytes())
    at = raw.index(f"value-{i:06d}-".encode())
    assert raw.count(f"value-{i:06d}-".encode()) == 1
    digit = at + len("value-000")
    raw[digit] = ord("7") if raw[digit] != ord("7") else ord("8")
    data_file.write_bytes(bytes(raw))
    return bytes(raw[at : at + len("value-000000-")])


def test_an_emptied_data_file_is_refused(filled: Cluster) -> None:
    os.truncate(filled.data_file, 0)
    assert_refused(filled.serve_once(), filled.data_file, "is empty")


def test_a_data_file_cut_to_a_megabyte_is_refused_not_a_sigbus(filled: Cluster) -> None:
    os.truncate(filled.data_file, 1 << 20)
    assert_refused(filled.serve_once(), filled.data_file, "is cut short")


def test_a_page_of_random_bytes_is_refused(filled: Cluster) -> None:
    size = filled.data_file.stat().st_size
    page = size // 4096 // 2
    with filled.data_file.open("r+b") as file:
        file.seek(page * 4096)
        file.write(random.Random(5).randbytes(4096))
    assert_refused(filled.serve_once(), filled.data_file, "")


def test_a_changed_digit_in_a_stored_value_is_refused(filled: Cluster) -> None:
    change_a_digit(filled.data_file, 1234)
    assert_refused(filled.serve_once(), filled.data_file, "fails its checksum")


def set_aside_files(cluster: Cluster) -> list[str]:
    return sorted(name for name in os.listdir(cluster.data) if name.startswith("data.mdb.damaged-"))


async def test_salvage_removes_a_damaged_value_and_serves_every_other_key(
    filled: Cluster,
) -> None:
    before = filled.node()
    try:
        before.start().wait_ready()
        actor = await actor_of(before)
    finally:
        before.stop()
    change_a_digit(filled.data_file, 1234)
    node = filled.node("--salvage")
    try:
        node.start().wait_ready()
        values = await read_values(node)
        assert values == {i: value_of(i) for i in range(KEYS) if i != 1234}
        assert await actor_of(node) != actor  # a new incarnation
        log = node.stderr_text()
        assert " ERROR replica.durable.salvage: salvage: removed 1 damaged values" in log, log
        assert "fails its checksum" in log, log
        assert "Traceback" not in log, log
        assert node.stop() == 0
    finally:
        node.stop()
    assert len(set_aside_files(filled)) == 1  # the damaged file, kept
    again = filled.node()  # the damaged value is gone: no salvage needed any more
    try:
        again.start().wait_ready()
        assert len(await read_values(again)) == KEYS - 1
    finally:
        again.stop()


async def test_salvage_sets_an_unreadable_data_file_aside_and_starts_from_the_log(
    filled: Cluster,
) -> None:
    os.truncate(filled.data_file, 1 << 20)
    node = filled.node("--salvage")
    try:
        node.start().wait_ready()
        log = node.stderr_text()
        assert " ERROR replica.durable.lmdb_store: salvage: " in log, log
        assert "is cut short" in log and "the rest from the log" in log, log
        assert "Traceback" not in log, log
        await fill(node, 10)  # it takes writes
        assert await read_values(node, 10) == {i: value_of(i) for i in range(10)}
        assert node.stop() == 0
    finally:
        node.stop()
    (aside,) = set_aside_files(filled)
    assert (filled.data / aside).stat().st_size == 1 << 20
    again = filled.node()
    try:
        again.start().wait_ready()
        assert await read_values(again, 10) == {i: value_of(i) for i in range(10)}
    finally:
        again.stop()


def test_without_salvage_nothing_is_moved_or_removed(filled: Cluster) -> None:
    damaged = change_a_digit(filled.data_file, 7)
    assert_refused(filled.serve_once(), filled.data_file, "--salvage")
    assert damaged in filled.data_file.read_bytes()  # still there, not removed
    assert set_aside_files(filled) == []


def flag_as_branch(data_file: Path, marker: bytes) -> None:
    """Mark the leaf page holding `marker` a branch page: LMDB's cursor then fails an assertion."""
    raw = bytearray(data_file.read_bytes())
    for start in range(2 * PAGE, len(raw), PAGE):
        flags = int.from_bytes(raw[start + 10 : start + 12], "little")
        if flags == P_LEAF and marker in raw[start : start + PAGE]:
            raw[start + 10 : start + 12] = P_BRANCH.to_bytes(2, "little")
            data_file.write_bytes(bytes(raw))
            return
    raise AssertionError(f"no leaf page holds {marker!r}")


def test_a_page_that_crashes_lmdb_is_refused_with_one_line_not_an_abort(filled: Cluster) -> None:
    """LMDB aborts on this page; the child that reads the file first dies instead of the node."""
    flag_as_branch(filled.data_file, f"value-{KEYS // 2:06d}-".encode())
    assert_refused(filled.serve_once(), filled.data_file, "LMDB died of SIGABRT reading it")


async def test_salvage_copies_what_lmdb_can_read_of_pages_that_crash_it(filled: Cluster) -> None:
    flag_as_branch(filled.data_file, f"value-{KEYS // 2:06d}-".encode())
    node = filled.node("--salvage")
    try:
        node.start().wait_ready()  # LMDB aborted in the children that read the file
        log = node.stderr_text()
        assert "LMDB died of SIGABRT reading it" in log, log
        assert "values it could read copied, the rest from the log" in log, log
        values = await read_values(node)
        assert KEYS * 9 // 10 < len(values) < KEYS  # all but the keys around the damaged page
        assert all(value == value_of(i) for i, value in values.items())
        assert node.stop() == 0
    finally:
        node.stop()
    assert len(set_aside_files(filled)) == 1


def test_serve_help_documents_salvage() -> None:
    result = subprocess.run(
        replica_command("serve", "--help"), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--salvage" in text and "never done by default" in text, text
    assert "data.mdb.damaged-<unix time>" in text, text
