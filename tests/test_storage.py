"""The durable store: records round-trip, and a data dir that is not ours stops the node."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.cli.serve import recover as _recover
from replica.crdt.lww import LWWRegister
from replica.crdt.mv_register import MVRegister
from replica.crdt.version_vector import Dot, VersionVector
from replica.durable.commit_log import frame, parse
from replica.durable.errors import StorageError
from replica.durable.lmdb_store import LmdbStore
from replica.durable.records import (
    BATCH_HEADER,
    TYPE_TAGS,
    VALUE_VERSION,
    decode_state,
    encode_commit,
    encode_stored,
    log_entries,
    state_of,
)
from replica.durable.store import MemoryStore, open_store
from replica.keyspaces import Keyspaces
from replica.node.handlers import kv as kv_ops
from replica.node.handlers import lww as lww_ops
from replica.node.handlers import mv as mv_ops
from replica.node.handlers import mvcc as mvcc_ops
from replica.node.router import Node
from replica.replication.digest import BUCKETS
from tests.harness import free_ports, replica_command
from tests.names import KV, LWW, MV, MVCC
from tests.strategies_mv import mv_registers
from tests.strategies_types import clocked_siblings, lww_registers, version_chains


def sample_states() -> dict[tuple[str, str], Any]:
    """One state of every keyspace, built by the node's own operations."""
    ks = Keyspaces("n1", mvcc_retention_ms=0, actor="n1~abc123")
    mv_ops.write(ks, "cart", ["milk"], None)
    mv_ops.write(ks, "cart", ["eggs"], VersionVector())  # a concurrent sibling
    kv_ops.put(ks, "user", "Alice", (1, 0))
    kv_ops.put(ks, "user", "Bob", (0, 1))
    mvcc_ops.put(ks, "x", "v1", 100)
    mvcc_ops.put(ks, "x", {"v": 2}, 200)
    ks.collect_garbage(150)
    lww_ops.write(ks, "flag", True, 5)
    mv_ops.write(ks, "k" * 2000, "a key longer than LMDB's key limit", None)
    # tombstones: a deleted MV key, a KV delete beside a concurrent sibling, LWW and MVCC ones
    mv_ops.write(ks, "gone", "x", None)
    mv_ops.delete(ks, "gone", ks.states[MV]["gone"].context())
    kv_ops.put(ks, "pair", "a", (1, 0))
    kv_ops.put(ks, "pair", "b", (0, 1))
    kv_ops.delete(ks, "pair", (2, 0))
    lww_ops.delete(ks, "off", 7)
    mvcc_ops.delete(ks, "x", 300)
    return {
        (space, key): state
        for space in (MV, KV, MVCC, LWW)
        for key, state in ks.states[space].items()
    }


LOOP = asyncio.new_event_loop()
"""The loop a test's store commits on: a store's log link serves one loop."""


def commit(store: Any, record: bytes) -> None:
    """Make one log record durable through the store, as `Durability` does."""

    async def submitted() -> str | None:
        done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        store.submit(record, done.set_result)
        return await done

    failure = LOOP.run_until_complete(submitted())
    assert failure is None, failure


def batch(entries: list[tuple[str, str, Any]]) -> bytes:
    """The log record of a commit of (keyspace, key, state or None)."""
    return encode_commit({(ks, key): state for ks, key, state in entries})


def encode_state(keyspace: str, key: str, state: Any) -> bytes:
    """A state's LMDB value, as a checkpoint writes it."""
    return encode_stored(keyspace, key, state.to_stored())


def value(tag: int, body: bytes, version: int = VALUE_VERSION) -> bytes:
    """An LMDB value of any tag, version and body, with a valid checksum."""
    data = bytes([tag, version]) + body
    return data + zlib.crc32(data).to_bytes(4, "little")


def store_all(store: Any, states: dict[tuple[str, str], Any]) -> None:
    if isinstance(store, MemoryStore):
        store.store_record(encode_commit(states))
    else:
        commit(store, encode_commit(states))


def loaded(store: Any) -> dict[tuple[str, str], Any]:
    return {(ks, key): state for ks, key, state in store.load_all()}


def reopened(store: LmdbStore) -> LmdbStore:
    """Close `store` (a checkpoint of everything) and open its data dir again."""
    store.close()
    return LmdbStore(store.path)


def count(store: LmdbStore) -> int:
    """The keys in LMDB, as of the last checkpoint."""
    with store.env.begin() as txn:
        return sum(txn.stat(store.env.open_db(ks.encode(), txn=txn))["entries"] for ks in TYPE_TAGS)


def test_every_keyspace_round_trips_through_lmdb(tmp_path: Path) -> None:
    states = sample_states()
    store = LmdbStore(tmp_path / "data")
    store_all(store, states)
    store.close()
    reopened = LmdbStore(tmp_path / "data")
    try:
        assert loaded(reopened) == states
        assert count(reopened) == len(states)
    finally:
        reopened.close()


def test_every_keyspace_round_trips_through_memory() -> None:
    states = sample_states()
    store = MemoryStore()
    store_all(store, states)
    assert loaded(store) == states


def test_a_later_batch_replaces_a_key_and_remove_forgets_it(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    first, second = LWWRegister("a", 1, "n1"), LWWRegister("b", 2, "n1")
    commit(store, batch([(LWW, "k", first)]))
    commit(store, batch([(LWW, "k", second)]))
    store = reopened(store)
    assert loaded(store) == {(LWW, "k"): second}
    commit(store, batch([(LWW, "k", None), (MV, "absent", None)]))
    store = reopened(store)
    assert loaded(store) == {}
    store.close()


def test_the_encoding_starts_with_a_type_tag_and_a_version() -> None:
    data = encode_state(MV, "k", MVRegister())
    assert data[0] == TYPE_TAGS[MV]
    assert data[1] == VALUE_VERSION


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (value(TYPE_TAGS[KV], b'["k", []]'), "wrong type tag"),
        (value(TYPE_TAGS[MV], b'["k", []]', 99), "unknown format version"),
        (value(TYPE_TAGS[MV], b'["k", []]', 1), "unknown format version"),
        (value(TYPE_TAGS[MV], b"not json"), "not valid JSON"),
        (value(TYPE_TAGS[MV], b"[1, []]"), "key is not a string"),
        (value(TYPE_TAGS[MV], b'["k", [{"dot": 3}]]'), "undecodable"),
        (b"", "wrong type tag"),
    ],
)
def test_an_undecodable_record_is_a_storage_error(data: bytes, complaint: str) -> None:
    with pytest.raises(StorageError, match=complaint):
        decode_state(MV, data)


# -- the decoding recovery uses, which trusts invariants ---------------------------------

keyed_states = st.one_of(
    st.tuples(st.just(MV), mv_registers(universe=None)),
    st.tuples(st.just(KV), clocked_siblings()),
    st.tuples(st.just(MVCC), version_chains()),
    st.tuples(st.just(LWW), lww_registers()),
)


@given(keyed_state=keyed_states)
def test_decoding_gives_the_state_that_was_stored(
    keyed_state: tuple[str, Any],
) -> None:
    keyspace, state = keyed_state
    data = encode_state(keyspace, "k", state)
    key, fast = decode_state(keyspace, data)
    assert key == "k"
    assert fast == state
    assert type(fast) is type(state)
    assert fast.to_wire() == state.to_wire()  # same order, not merely equal
    if keyspace == MV:
        assert all(type(s.dot) is Dot for s in fast.siblings)
        assert fast.context() == state.context()


def test_tombstones_round_trip_through_a_log_record() -> None:
    states = sample_states()
    assert states[(MV, "gone")].deleted and not states[(MV, "gone")].siblings
    assert states[(KV, "pair")].deleted == ((2, 0),)
    assert states[(LWW, "off")].deleted
    assert states[(MVCC, "x")].versions[-1].deleted
    entries = log_entries(encode_commit(states))
    assert {(ks, key): state_of(ks, key, stored) for ks, key, stored in entries} == states


def test_every_keyspace_round_trips_through_decoding() -> None:
    for (keyspace, key), state in sample_states().items():
        assert decode_state(keyspace, encode_state(keyspace, key, state)) == (
            key,
            state,
        )


def test_mv_records_in_the_wire_form_still_load() -> None:
    state, _ = MVRegister().write("n1", {"a": [1]}, {"n2": 3})
    older = record(MV, state.to_wire())
    assert decode_state(MV, older) == ("k", state)
    assert decode_state(MV, encode_state(MV, "k", state)) == ("k", state)


def record(keyspace: str, wire: Any) -> bytes:
    return value(TYPE_TAGS[keyspace], orjson.dumps(["k", wire]))


MISSHAPEN = [
    (MV, {"value": 1}),
    (MV, [1]),
    (MV, [[1, ["n1", 1], {}]]),
    (MV, [{"dot": 3}]),
    (MV, [{"value": 1, "past": {}}]),
    (MV, [{"value": 1, "dot": ["n1", 1]}]),
    (MV, [{"dot": ["n1", 1], "past": {}}]),
    (MV, [{"value": 1, "dot": "ab", "past": {}}]),
    (MV, [{"value": 1, "dot": ["n1", 1, 2], "past": {}}]),
    (MV, [{"value": 1, "dot": [1, 1], "past": {}}]),
    (MV, [{"value": 1, "dot": ["n1", "1"], "past": {}}]),
    (MV, [{"value": 1, "dot": ["n1", 1.5], "past": {}}]),
    (MV, [{"value": 1, "dot": ["n1", 1], "past": []}]),
    (MV, [{"value": 1, "dot": ["n1", 2], "past": {"n2": "1"}}]),
    (KV, {}),
    (KV, [[1, [1]]]),
    (KV, [{"value": 1}]),
    (KV, [{"clock": [1]}]),
    (KV, [{"value": 1, "clock": "1"}]),
    (KV, [{"value": 1, "clock": [1, "x"]}]),
    (MVCC, []),
    (MVCC, {"versions": [], "floor": -1}),
    (MVCC, {"versions": {}, "floor": -1, "dropped": 0}),
    (MVCC, {"versions": [], "floor": "x", "dropped": 0}),
    (MVCC, {"versions": [[1, "v"]], "floor": -1, "dropped": 0}),
    (MVCC, {"versions": [["1", "v", "n1"]], "floor": -1, "dropped": 0}),
    (MVCC, {"versions": [[1, "v", 7]], "floor": -1, "dropped": 0}),
    (MVCC, {"versions": ["1vn"], "floor": -1, "dropped": 0}),
    (LWW, []),
    (LWW, "text"),
    (LWW, None),
    (LWW, {"timestamp": 1, "replica": "n1"}),
    (LWW, {"value": 1, "replica": "n1"}),
    (LWW, {"value": 1, "timestamp": "1", "replica": "n1"}),
    (LWW, {"value": 1, "timestamp": 1, "replica": 5}),
]


@pytest.mark.parametrize(("keyspace", "wire"), MISSHAPEN)
def test_a_misshapen_state_is_a_storage_error(keyspace: str, wire: Any) -> None:
    with pytest.raises(StorageError, match="undecodable"):
        decode_state(keyspace, record(keyspace, wire))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        value(TYPE_TAGS[KV], b'["k", []]'),
        value(TYPE_TAGS[MV], b'["k", []]', 99),
        value(TYPE_TAGS[MV], b"not json"),
        value(TYPE_TAGS[MV], b'["k"]'),
        value(TYPE_TAGS[MV], b"[1, []]"),
    ],
)
def test_decoding_still_checks_the_tag_version_and_framing(data: bytes) -> None:
    with pytest.raises(StorageError):
        decode_state(MV, data)


def put_raw(path: Path, db: bytes, key: bytes, value: bytes) -> None:
    """Put a value into the store's LMDB behind its back."""
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(key, value, db=env.open_db(db, txn=txn))
    env.close()


def format_of(path: Path) -> bytes | None:
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin() as txn:
        marker = txn.get(b"format", db=env.open_db(b"meta", txn=txn))
    env.close()
    return marker


def corrupt_one_record(path: Path) -> None:
    put_raw(path, b"mv", b"k", value(TYPE_TAGS[MV], b"{broken"))


def test_a_corrupt_record_stops_loading(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    store_all(store, sample_states())
    store.close()
    corrupt_one_record(tmp_path)
    store = LmdbStore(tmp_path)
    with pytest.raises(StorageError, match="not valid JSON"):
        list(store.load_all())
    store.close()


def test_a_record_of_the_wrong_shape_stops_loading(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    store_all(store, sample_states())
    store.close()
    put_raw(tmp_path, b"mv", b"bad", record(MV, [{"value": 1, "dot": "ab", "past": {}}]))
    store = LmdbStore(tmp_path)
    with pytest.raises(StorageError, match="undecodable"):
        list(store.load_all())
    store.close()


def test_a_logged_state_of_the_wrong_shape_stops_loading(tmp_path: Path) -> None:
    shape = orjson.dumps([[TYPE_TAGS[MV], "bad", [{"value": 1, "dot": "ab", "past": {}}]]])
    record = BATCH_HEADER + shape
    write_then_crash(tmp_path, f"commit({record!r})")
    store = LmdbStore(tmp_path)
    with pytest.raises(StorageError, match="undecodable"):
        list(store.load_all())
    store.close()


def test_recovery_loads_every_key_and_tells_replication(tmp_path: Path) -> None:
    states = sample_states()
    store = LmdbStore(tmp_path)
    store_all(store, states)
    store = reopened(store)  # loading comes before writes
    node = Node("n1", ["n1", "n2"], actor="n1~abc123")
    try:
        _recover(node, store)
    finally:
        gc.unfreeze()
        store.close()
    assert gc.isenabled()
    assert {
        (space, key): state
        for space in (MV, KV, MVCC, LWW)
        for key, state in node.keyspaces.states[space].items()
    } == states
    assert node.replicator is not None
    for space in (MV, KV, MVCC, LWW):
        digest = node.replicator.digests[space]
        assert set(digest.keys_in(range(BUCKETS))) == set(node.keyspaces.states[space])
    assert node.keyspaces.hlc.last >= 200  # the newest MVCC timestamp was observed


def test_an_lmdb_store_of_someone_else_is_refused(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path))
    with env.begin(write=True) as txn:
        txn.put(b"theirs", b"data")
    env.close()
    with pytest.raises(StorageError, match="not ours"):
        LmdbStore(tmp_path)


def test_a_store_of_another_format_is_refused(tmp_path: Path) -> None:
    LmdbStore(tmp_path).close()
    put_raw(tmp_path, b"meta", b"format", b"replica-store/9")
    with pytest.raises(StorageError, match="format"):
        LmdbStore(tmp_path)


def test_a_directory_of_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StorageError, match="other files"):
        LmdbStore(tmp_path)


def test_a_data_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("")
    with pytest.raises(StorageError, match="cannot use"):
        LmdbStore(tmp_path / "data")


def test_an_empty_environment_without_a_marker_is_taken_as_new(tmp_path: Path) -> None:
    lmdb.open(str(tmp_path)).close()  # a first start that died before writing anything
    LmdbStore(tmp_path).close()


# -- incarnations ----------------------------------------------------------------------------


def test_a_new_data_dir_gets_a_fresh_actor_that_survives_restarts(tmp_path: Path) -> None:
    store, (actor, _) = open_store(tmp_path / "n1", "n1")
    store.close()
    assert actor.startswith("n1~")
    assert len(actor) == len("n1~") + 6
    store, (again, _) = open_store(tmp_path / "n1", "n1")
    store.close()
    assert again == actor


def test_a_wiped_data_dir_gets_another_actor(tmp_path: Path) -> None:
    actors = set()
    for _ in range(3):
        store, (actor, _) = open_store(tmp_path / "n1", "n1")
        store.close()
        actors.add(actor)
        for file in (tmp_path / "n1").iterdir():
            file.unlink()
    assert len(actors) == 3


def test_another_nodes_data_dir_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path, "n1")[0].close()
    with pytest.raises(StorageError, match="belongs to node 'n1'"):
        open_store(tmp_path, "n2")


def stored_dot_floor(path: Path) -> bytes | None:
    """Meta's kept dot floor, read by opening the store as a tool does (no incarnation)."""
    store = LmdbStore(path)
    try:
        with store.env.begin() as txn:
            value = txn.get(b"dot_floor", db=store.env.open_db(b"meta", txn=txn))
            return None if value is None else bytes(value)
    finally:
        store.close()


def test_a_clean_stop_keeps_the_dot_floor_with_the_actor_and_an_unclean_one_drops_both(
    tmp_path: Path,
) -> None:
    data = tmp_path / "n1"
    store, (actor, floor) = open_store(data, "n1")
    assert floor == 0
    store.close(dot_floor=7)
    assert stored_dot_floor(data) == b"7"
    store, started = open_store(data, "n1")
    assert started == (actor, 7)
    assert isinstance(store, LmdbStore)
    with store.env.begin() as txn:  # the running node holds it: a crash now leaves none behind
        assert txn.get(b"dot_floor", db=store.env.open_db(b"meta", txn=txn)) is None
    store.close(clean=False, dot_floor=9)
    store, (again, floor) = open_store(data, "n1")
    store.close()
    assert again != actor and floor == 0


def test_a_salvaged_start_takes_a_new_actor_at_floor_0(tmp_path: Path) -> None:
    store, (actor, _) = open_store(tmp_path, "n1")
    store.close(dot_floor=7)
    store, (again, floor) = open_store(tmp_path, "n1", salvage=True)
    store.close()
    assert again != actor and floor == 0


@pytest.mark.parametrize("damaged", [b"", b"x7", b"-7", b"7 "])
def test_a_clean_stop_whose_floor_is_damaged_starts_as_an_unclean_one(
    tmp_path: Path, damaged: bytes
) -> None:
    store, (actor, _) = open_store(tmp_path, "n1")
    store.close(dot_floor=7)
    tool = LmdbStore(tmp_path)
    with tool.env.begin(write=True) as txn:
        txn.put(b"dot_floor", damaged, db=tool.env.open_db(b"meta", txn=txn))
    tool.close()
    store, (again, floor) = open_store(tmp_path, "n1")
    store.close()
    assert again != actor and floor == 0


def test_a_node_in_memory_writes_dots_with_its_own_id() -> None:
    store, started = open_store(None, "n1")
    assert isinstance(store, MemoryStore)
    assert started == ("n1", 0)


# -- the command line ------------------------------------------------------------------------


def serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        replica_command("serve", "--config", str(config), "--node", "n1"),
        capture_output=True,
        text=True,
        timeout=30,
    )


def one_node_config(directory: Path) -> Path:
    (port,) = free_ports(1)
    config = directory / "cluster.toml"
    config.write_text(
        f'[[nodes]]\nid = "n1"\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "data"\n'
    )
    return config


@pytest.mark.parametrize(
    "damage",
    ["corrupt-record", "corrupt-log", "foreign-store", "other-files", "in-use", "old-format"],
)
def test_serve_over_a_bad_data_dir_exits_2_with_one_line(tmp_path: Path, damage: str) -> None:
    config = one_node_config(tmp_path)
    data = tmp_path / "data"
    holder = None
    if damage == "corrupt-record":
        LmdbStore(data).close()
        corrupt_one_record(data)
    elif damage == "corrupt-log":
        LmdbStore(data).close()
        write_then_crash(data, "\n".join(f'put(("k{i}", {i}))' for i in range(20)))
        (segment,) = segments_in(data)
        damaged = bytearray((data / segment).read_bytes())
        damaged[100] ^= 0x01
        (data / segment).write_bytes(bytes(damaged))
    elif damage == "foreign-store":
        env = lmdb.open(str(data))
        with env.begin(write=True) as txn:
            txn.put(b"theirs", b"data")
        env.close()
    elif damage == "old-format":
        LmdbStore(data).close()
        put_raw(data, b"meta", b"format", b"replica-store/3")
    elif damage == "in-use":
        holder = LmdbStore(data)  # another process has it: this test's own
    else:
        data.mkdir()
        (data / "notes.txt").write_text("mine")
    try:
        result = serve_once(config)
    finally:
        if holder is not None:
            holder.close()
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replica: storage error: "), result.stderr
    if damage == "in-use":
        assert lines[0].endswith("is in use by another process"), result.stderr
    if damage == "old-format":
        assert "holds format b'replica-store/3'" in lines[0], result.stderr


# -- the commit log behind LMDB ----------------------------------------------------------------

CRASHING_WRITER = """
import asyncio, os, sys
from replica.crdt.lww import LWWRegister
from replica.durable.lmdb_store import LmdbStore
from replica.durable.records import encode_commit

store = LmdbStore(sys.argv[1], checkpoint_interval_s=3600)  # none before the crash
loop = asyncio.new_event_loop()

def commit(record):
    async def submitted():
        done = loop.create_future()
        store.submit(record, done.set_result)
        return await done
    assert loop.run_until_complete(submitted()) is None

def put(*pairs):
    commit(encode_commit({{("lww", k): LWWRegister(v, 1, "n1") for k, v in pairs}}))

def remove(key):
    commit(encode_commit({{("lww", key): None}}))

{body}
os._exit(0)  # no close, so no checkpoint: what a kill -9 leaves
"""


def write_then_crash(path: Path, body: str) -> None:
    """Run `body` against a store in a process of its own that then dies without closing it."""
    script = CRASHING_WRITER.format(body=body)
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)


def lww_values(store: LmdbStore) -> dict[str, Any]:
    return {key: state.value for ks, key, state in store.load_all() if ks == LWW}


def reopened_values(store: LmdbStore) -> dict[str, Any]:
    """Close `store` and read what its data dir holds then."""
    store = reopened(store)
    try:
        return lww_values(store)
    finally:
        store.close()


def segments_in(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if name.startswith("log."))


def put(store: LmdbStore, *pairs: tuple[str, Any]) -> None:
    commit(store, batch([(LWW, k, LWWRegister(v, 1, "n1")) for k, v in pairs]))


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        LOOP.run_until_complete(asyncio.sleep(0.01))  # the link reads checkpoint lines


def test_a_crash_before_any_checkpoint_loses_no_commit(tmp_path: Path) -> None:
    write_then_crash(tmp_path, 'put(("a", 1), ("b", 1))\nput(("b", 2))\nput(("c", 3), ("b", 3))')
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"a": 1, "b": 3, "c": 3}  # the later record of b wins
        assert count(store) == 0  # all of it came from the log
    finally:
        store.close()
    store = LmdbStore(tmp_path)
    try:
        assert count(store) == 3  # closing checkpointed it
        assert lww_values(store) == {"a": 1, "b": 3, "c": 3}
    finally:
        store.close()


def test_the_log_replaces_what_lmdb_holds(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    put(store, ("a", "old"), ("b", "old"), ("gone", "old"))
    store.close()  # in LMDB now
    assert segments_in(tmp_path) == []  # a clean close leaves nothing to replay
    write_then_crash(tmp_path, 'put(("a", "new"))\nremove("gone")')
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"a": "new", "b": "old"}
    finally:
        store.close()


def test_a_removal_then_a_write_of_the_same_key_keeps_the_write(tmp_path: Path) -> None:
    write_then_crash(tmp_path, 'put(("k", 1))\nremove("k")\nput(("k", 2))')
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"k": 2}
    finally:
        store.close()


def test_a_torn_tail_is_cut_and_every_whole_batch_loads(tmp_path: Path) -> None:
    write_then_crash(tmp_path, "\n".join(f'put(("k{i}", {i}), ("x", {i}))' for i in range(50)))
    (segment,) = segments_in(tmp_path)
    path = tmp_path / segment
    end = parse(path.read_bytes())[1]
    with path.open("r+b") as file:  # the next batch was being written when the node died
        file.seek(end)
        file.write(frame([batch([(LWW, "late", LWWRegister(9, 1, "n1"))])])[:-7])
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {**{f"k{i}": i for i in range(50)}, "x": 49}
        assert path.stat().st_size == end
    finally:
        store.close()


def test_a_damaged_record_in_the_middle_of_the_log_stops_the_store(tmp_path: Path) -> None:
    write_then_crash(tmp_path, "\n".join(f'put(("k{i}", {i}))' for i in range(20)))
    (segment,) = segments_in(tmp_path)
    path = tmp_path / segment
    data = bytearray(path.read_bytes())
    data[200] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StorageError, match=f"{segment} has a damaged record"):
        LmdbStore(tmp_path)
    assert path.read_bytes() == bytes(data)  # left as it was, for whoever looks into it


def test_a_checkpoint_moves_the_log_into_lmdb(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, checkpoint_interval_s=0.05)
    put(store, ("a", 1), ("b", 1))
    put(store, ("a", 2))
    (before,) = segments_in(tmp_path)
    wait_until(lambda: count(store) == 2 and before not in segments_in(tmp_path))
    put(store, ("c", 3))  # appends go on in the next segment
    assert reopened_values(store) == {"a": 2, "b": 1, "c": 3}


def test_status_counts_the_checkpoints_that_wrote(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, checkpoint_interval_s=0.05)
    try:
        store.begin_writes()
        assert store.status()["checkpoints"] == 0
        put(store, ("a", 1), ("b", 1))
        put(store, ("a", 2))
        wait_until(lambda: store.status()["checkpoints"] == 1)
        status = store.status()
        assert (status["checkpoints"], status["checkpoint_failures"]) == (1, 0)
        last = status["last_checkpoint"]
        assert (last["keys"], last["error"]) == (2, None)  # "a" once: its latest state
        assert last["ms"] >= 0
        LOOP.run_until_complete(asyncio.sleep(0.5))  # ten intervals with nothing new
        assert store.status()["checkpoints"] == 1  # none counted
    finally:
        store.close()


def test_segments_a_crash_left_after_their_checkpoint_are_not_replayed(tmp_path: Path) -> None:
    """The crash came between a checkpoint's commit and its deletion of the segments."""
    store = LmdbStore(tmp_path)
    put(store, ("k", "first"))
    (first,) = segments_in(tmp_path)
    kept = (tmp_path / first).read_bytes()
    store = reopened(store)  # checkpointed, and its segments deleted
    commit(store, batch([(LWW, "k", None)]))
    store.close()
    (tmp_path / first).write_bytes(kept)  # as if its deletion had never reached the disk
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {}  # replaying it would have brought k back
        assert first not in segments_in(tmp_path)
    finally:
        store.close()


def test_checkpoints_run_on_their_own_while_commits_go_on(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, segment_bytes=4096, checkpoint_interval_s=0.01)
    deadline = time.monotonic() + 30
    i, segments = 0, set()
    while (i < 300 or count(store) < 120) and time.monotonic() < deadline:
        put(store, (f"k{i % 120}", i))
        segments.update(segments_in(tmp_path))
        i += 1
        time.sleep(0.001)
    assert count(store) == 120  # in LMDB, and no checkpoint was asked for
    assert len(segments) >= 3  # the log moved on to new segments as it went
    assert reopened_values(store) == {f"k{j % 120}": j for j in range(i - 120, i)}


def test_a_data_dir_is_opened_by_one_store_at_a_time(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    try:
        with pytest.raises(StorageError, match="is in use by another process"):
            LmdbStore(tmp_path)
    finally:
        store.close()
    LmdbStore(tmp_path).close()  # closing lets it go


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(0.5)
"""


def test_a_lock_left_to_a_dead_nodes_log_writer_is_waited_for(tmp_path: Path) -> None:
    """The pid in the lock file is gone, so the holder is its log writer, about to exit."""
    LmdbStore(tmp_path).close()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout
    lock = tmp_path / "replica.lock"
    lock.write_text(gone)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        store = LmdbStore(tmp_path)
        assert holder.wait(timeout=5) == 0  # it had let go: the store waited for it
        store.close()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_log_segments_without_a_database_are_refused(tmp_path: Path) -> None:
    LmdbStore(tmp_path).close()
    write_then_crash(tmp_path, 'put(("k", 1))')
    (tmp_path / "data.mdb").unlink()
    with pytest.raises(StorageError, match="log segments but no database"):
        LmdbStore(tmp_path)


@pytest.mark.parametrize("marker", [b"replica-store/1", b"replica-store/2", b"replica-store/3"])
def test_a_data_dir_of_an_earlier_format_is_refused(tmp_path: Path, marker: bytes) -> None:
    LmdbStore(tmp_path).close()
    put_raw(tmp_path, b"meta", b"format", marker)
    with pytest.raises(StorageError, match=f"holds format b'{marker.decode()}'"):
        LmdbStore(tmp_path)
    assert format_of(tmp_path) == marker  # left as it was


def test_a_log_record_gives_its_entries_in_order() -> None:
    states = sample_states()
    record = batch([*((ks, key, state) for (ks, key), state in states.items()), (KV, "gone", None)])
    entries = log_entries(record)
    assert [(ks, key) for ks, key, _ in entries] == [*states, (KV, "gone")]
    assert [state_of(ks, key, stored) for ks, key, stored in entries[:-1]] == list(states.values())
    assert entries[-1][2] is None


@given(keyed_state=keyed_states)
def test_a_logged_state_decodes_to_itself(keyed_state: tuple[str, Any]) -> None:
    keyspace, state = keyed_state
    ((space, key, stored),) = log_entries(batch([(keyspace, "k", state)]))
    assert (space, key) == (keyspace, "k")
    assert state_of(keyspace, key, stored) == state


def test_log_records_of_one_key_are_refused() -> None:
    for (keyspace, key), state in sample_states().items():
        with pytest.raises(StorageError, match="not a batch"):
            log_entries(encode_state(keyspace, key, state))
    with pytest.raises(StorageError, match="not a batch"):
        log_entries(bytes([0x7F, 1, TYPE_TAGS[MVCC]]) + b"gone")  # a removal of one key


@pytest.mark.parametrize(
    "record",
    [
        b"\x09\x01[]",
        b"\x10\x02[]",
        BATCH_HEADER + b"nope",
        BATCH_HEADER + b"{}",
        BATCH_HEADER + b"[[1]]",
        BATCH_HEADER + b'[[9, "k", 1]]',
        BATCH_HEADER + b'[[true, "k", 1]]',
        BATCH_HEADER + b"[[1, 2, 1]]",
        bytes([0x7F, 1, 0x09]) + b"k",
    ],
)
def test_a_log_record_that_is_not_ours_is_a_storage_error(record: bytes) -> None:
    with pytest.raises(StorageError):
        log_entries(record)


def segment_sizes(path: Path) -> list[int] | None:
    """The sizes of the segments, or None if one was removed while we looked."""
    try:
        return [(path / name).stat().st_size for name in segments_in(path)]
    except FileNotFoundError:  # the checkpointer recycled a segment between list and stat
        return None


def test_zeros_for_each_segment_follow_what_the_last_one_took(tmp_path: Path) -> None:
    mib = 1 << 20
    store = LmdbStore(tmp_path, segment_bytes=8 * mib, checkpoint_interval_s=0.05)
    store.begin_writes()
    assert segment_sizes(tmp_path) == [8 * mib]  # a writer's first: a whole segment
    put(store, ("small", 1))
    wait_until(lambda: segment_sizes(tmp_path) == [mib])  # it took a few bytes: the least
    put(store, ("big", "x" * 1_600_000))
    wait_until(lambda: segment_sizes(tmp_path) == [4 * mib])  # twice 1.6 MB, in whole MiB
    put(store, ("bigger", "x" * 6_000_000))
    wait_until(lambda: segment_sizes(tmp_path) == [8 * mib])  # at most a segment
    values = reopened_values(store)
    assert values == {"small": 1, "big": "x" * 1_600_000, "bigger": "x" * 6_000_000}
