"""The durable store: records round-trip, and a data dir that is not ours stops the node."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
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
from replica.durable.records import (
    BATCH_HEADER,
    FORMAT_VERSION,
    TYPE_TAGS,
    VALUE_VERSION,
    decode_state,
    encode_batch,
    encode_commit,
    encode_removal,
    encode_state,
    log_entries,
    state_of,
)
from replica.durable.storage import FORMAT_MARKER, LmdbStore, MemoryStore, StorageError, open_store
from replica.keyspaces import KV, LWW, MV, MVCC, Keyspaces
from replica.node.router import Node
from replica.replication.digest import BUCKETS
from tests.harness import free_ports, replica_command
from tests.strategies_mv import mv_registers
from tests.strategies_types import clocked_siblings, lww_registers, version_chains


def sample_states() -> dict[tuple[str, str], Any]:
    """One state of every keyspace, built by the node's own operations."""
    ks = Keyspaces("n1", mvcc_retention_ms=0, actor="n1~abc123")
    ks.mv_write("cart", ["milk"], None)
    ks.mv_write("cart", ["eggs"], VersionVector())  # a concurrent sibling
    ks.kv_put("user", "Alice", (1, 0))
    ks.kv_put("user", "Bob", (0, 1))
    ks.mvcc_put("x", "v1", 100)
    ks.mvcc_put("x", {"v": 2}, 200)
    ks.mvcc_gc(150)
    ks.lww_write("flag", True, 5)
    ks.mv_write("k" * 2000, "a key longer than LMDB's key limit", None)
    return {
        (space, key): state
        for space in (MV, KV, MVCC, LWW)
        for key, state in getattr(ks, space).items()
    }


def store_all(store: Any, states: dict[tuple[str, str], Any]) -> None:
    store.store_batch([(ks, key, s) for (ks, key), s in states.items()])


def loaded(store: Any) -> dict[tuple[str, str], Any]:
    return {(ks, key): state for ks, key, state in store.load_all()}


def test_every_keyspace_round_trips_through_lmdb(tmp_path: Path) -> None:
    states = sample_states()
    store = LmdbStore(tmp_path / "data")
    store_all(store, states)
    store.close()
    reopened = LmdbStore(tmp_path / "data")
    try:
        assert loaded(reopened) == states
        assert reopened.count() == len(states)
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
    store.store_batch([(LWW, "k", first)])
    store.store_batch([(LWW, "k", second)])
    assert loaded(store) == {(LWW, "k"): second}
    store.store_batch([(LWW, "k", None), (MV, "absent", None)])
    assert loaded(store) == {}
    store.close()


def test_the_encoding_starts_with_a_type_tag_and_a_version() -> None:
    data = encode_state(MV, "k", MVRegister())
    assert data[0] == TYPE_TAGS[MV]
    assert data[1] == VALUE_VERSION


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (bytes([TYPE_TAGS[KV], FORMAT_VERSION]) + b'["k", []]', "wrong type tag"),
        (bytes([TYPE_TAGS[MV], 99]) + b'["k", []]', "unknown format version"),
        (bytes([TYPE_TAGS[MV], FORMAT_VERSION]) + b"not json", "not valid JSON"),
        (bytes([TYPE_TAGS[MV], FORMAT_VERSION]) + b"[1, []]", "key is not a string"),
        (bytes([TYPE_TAGS[MV], FORMAT_VERSION]) + b'["k", [{"dot": 3}]]', "undecodable"),
        (b"", "wrong type tag"),
    ],
)
def test_an_undecodable_record_is_a_storage_error(data: bytes, complaint: str) -> None:
    with pytest.raises(StorageError, match=complaint):
        decode_state(MV, data)


# -- the trusted decoding recovery uses --------------------------------------------------------

keyed_states = st.one_of(
    st.tuples(st.just(MV), mv_registers(universe=None)),
    st.tuples(st.just(KV), clocked_siblings()),
    st.tuples(st.just(MVCC), version_chains()),
    st.tuples(st.just(LWW), lww_registers()),
)


@given(keyed_state=keyed_states)
def test_trusted_decoding_gives_the_state_validating_decoding_gives(
    keyed_state: tuple[str, Any],
) -> None:
    keyspace, state = keyed_state
    data = encode_state(keyspace, "k", state)
    key, fast = decode_state(keyspace, data, trusted=True)
    assert key == "k"
    assert fast == decode_state(keyspace, data)[1] == state
    assert type(fast) is type(state)
    assert fast.to_wire() == state.to_wire()  # same order, not merely equal
    if keyspace == MV:
        assert all(type(s.dot) is Dot for s in fast.siblings)
        assert fast.context() == state.context()


def test_every_keyspace_round_trips_through_trusted_decoding() -> None:
    for (keyspace, key), state in sample_states().items():
        assert decode_state(keyspace, encode_state(keyspace, key, state), trusted=True) == (
            key,
            state,
        )


def test_mv_records_in_the_wire_form_still_load() -> None:
    state, _ = MVRegister().write("n1", {"a": [1]}, {"n2": 3})
    older = record(MV, state.to_wire())
    assert decode_state(MV, older, trusted=True) == ("k", state)
    assert decode_state(MV, older) == ("k", state)
    assert decode_state(MV, encode_state(MV, "k", state), trusted=True) == ("k", state)


def record(keyspace: str, wire: Any) -> bytes:
    return bytes([TYPE_TAGS[keyspace], FORMAT_VERSION]) + orjson.dumps(["k", wire])


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


@pytest.mark.parametrize("trusted", [True, False])
@pytest.mark.parametrize(("keyspace", "wire"), MISSHAPEN)
def test_a_misshapen_state_is_a_storage_error_either_way(
    keyspace: str, wire: Any, trusted: bool
) -> None:
    with pytest.raises(StorageError, match="undecodable"):
        decode_state(keyspace, record(keyspace, wire), trusted=trusted)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes([TYPE_TAGS[KV], FORMAT_VERSION]) + b'["k", []]',
        bytes([TYPE_TAGS[MV], 99]) + b'["k", []]',
        bytes([TYPE_TAGS[MV], FORMAT_VERSION]) + b"not json",
        bytes([TYPE_TAGS[MV], FORMAT_VERSION]) + b'["k"]',
        bytes([TYPE_TAGS[MV], FORMAT_VERSION]) + b"[1, []]",
    ],
)
def test_trusted_decoding_still_checks_the_tag_version_and_framing(data: bytes) -> None:
    with pytest.raises(StorageError):
        decode_state(MV, data, trusted=True)


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
    put_raw(path, b"mv", b"k", b"\x01\x01{broken")


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
    write_then_crash(tmp_path, f"store.begin_writes()\nstore._link.request(1, {record!r})")
    store = LmdbStore(tmp_path)
    with pytest.raises(StorageError, match="undecodable"):
        list(store.load_all())
    store.close()


def test_recovery_loads_every_key_and_tells_replication(tmp_path: Path) -> None:
    states = sample_states()
    store = LmdbStore(tmp_path)
    store_all(store, states)
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
        for key, state in getattr(node.keyspaces, space).items()
    } == states
    assert node.replicator is not None
    for space in (MV, KV, MVCC, LWW):
        digest = node.replicator.digests[space]
        assert set(digest.keys_in(range(BUCKETS))) == set(getattr(node.keyspaces, space))
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
    store, actor = open_store(tmp_path / "n1", "n1")
    store.close()
    assert actor.startswith("n1~")
    assert len(actor) == len("n1~") + 6
    store, again = open_store(tmp_path / "n1", "n1")
    store.close()
    assert again == actor


def test_a_wiped_data_dir_gets_another_actor(tmp_path: Path) -> None:
    actors = set()
    for _ in range(3):
        store, actor = open_store(tmp_path / "n1", "n1")
        store.close()
        actors.add(actor)
        for file in (tmp_path / "n1").iterdir():
            file.unlink()
    assert len(actors) == 3


def test_another_nodes_data_dir_is_refused(tmp_path: Path) -> None:
    open_store(tmp_path, "n1")[0].close()
    with pytest.raises(StorageError, match="belongs to node 'n1'"):
        open_store(tmp_path, "n2")


def test_a_node_in_memory_writes_dots_with_its_own_id() -> None:
    store, actor = open_store(None, "n1")
    assert isinstance(store, MemoryStore)
    assert actor == "n1"


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
    "damage", ["corrupt-record", "corrupt-log", "foreign-store", "other-files", "in-use"]
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


# -- the commit log behind LMDB ----------------------------------------------------------------

CRASHING_WRITER = """
import os, sys
from replica.crdt.lww import LWWRegister
from replica.keyspaces import LWW
from replica.durable.storage import LmdbStore

store = LmdbStore(sys.argv[1], checkpoint_interval_s=3600)  # none before the crash

def put(*pairs):
    store.store_batch([(LWW, k, LWWRegister(v, 1, "n1")) for k, v in pairs])

{body}
os._exit(0)  # no close, so no checkpoint: what a kill -9 leaves
"""


def write_then_crash(path: Path, body: str) -> None:
    """Run `body` against a store in a process of its own that then dies without closing it."""
    script = CRASHING_WRITER.format(body=body)
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)


def lww_values(store: LmdbStore) -> dict[str, Any]:
    return {key: state.value for ks, key, state in store.load_all() if ks == LWW}


def segments_in(path: Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if name.startswith("log."))


def put(store: LmdbStore, *pairs: tuple[str, Any]) -> None:
    store.store_batch([(LWW, k, LWWRegister(v, 1, "n1")) for k, v in pairs])


def test_a_crash_before_any_checkpoint_loses_no_commit(tmp_path: Path) -> None:
    write_then_crash(tmp_path, 'put(("a", 1), ("b", 1))\nput(("b", 2))\nput(("c", 3), ("b", 3))')
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"a": 1, "b": 3, "c": 3}  # the later record of b wins
        assert store.count() == 0  # all of it came from the log
    finally:
        store.close()
    store = LmdbStore(tmp_path)
    try:
        assert store.count() == 3  # closing checkpointed it
        assert lww_values(store) == {"a": 1, "b": 3, "c": 3}
    finally:
        store.close()


def test_the_log_replaces_what_lmdb_holds(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    put(store, ("a", "old"), ("b", "old"), ("gone", "old"))
    store.close()  # in LMDB now
    assert segments_in(tmp_path) == []  # a clean close leaves nothing to replay
    write_then_crash(tmp_path, 'put(("a", "new"))\nstore.store_batch([("lww", "gone", None)])')
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"a": "new", "b": "old"}
    finally:
        store.close()


def test_a_removal_then_a_write_of_the_same_key_keeps_the_write(tmp_path: Path) -> None:
    write_then_crash(
        tmp_path, 'put(("k", 1))\nstore.store_batch([("lww", "k", None)])\nput(("k", 2))'
    )
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
        file.write(frame([encode_batch([(LWW, "late", LWWRegister(9, 1, "n1"))])])[:-7])
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
    store = LmdbStore(tmp_path)
    try:
        put(store, ("a", 1), ("b", 1))
        put(store, ("a", 2))
        (before,) = segments_in(tmp_path)
        store.checkpoint()
        assert store.count() == 2
        assert before not in segments_in(tmp_path)
        put(store, ("c", 3))  # appends go on in the next segment
        assert lww_values(store) == {"a": 2, "b": 1, "c": 3}
    finally:
        store.close()


def test_status_counts_the_checkpoints_that_wrote(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path)
    try:
        assert store.status()["checkpoints"] == 0
        put(store, ("a", 1), ("b", 1))
        put(store, ("a", 2))
        store.checkpoint()
        store.checkpoint()  # nothing new: no checkpoint to count
        status = store.status()
        assert (status["checkpoints"], status["checkpoint_failures"]) == (1, 0)
        last = status["last_checkpoint"]
        assert (last["keys"], last["error"]) == (2, None)  # "a" once: its latest state
        assert last["ms"] >= 0
    finally:
        store.close()


def test_segments_a_crash_left_after_their_checkpoint_are_not_replayed(tmp_path: Path) -> None:
    """The crash came between a checkpoint's commit and its deletion of the segments."""
    store = LmdbStore(tmp_path)
    put(store, ("k", "first"))
    (first,) = segments_in(tmp_path)
    kept = (tmp_path / first).read_bytes()
    store.checkpoint()
    store.store_batch([(LWW, "k", None)])
    store.checkpoint()
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
    try:
        deadline = time.monotonic() + 30
        i, segments = 0, set()
        while (i < 300 or store.count() < 120) and time.monotonic() < deadline:
            put(store, (f"k{i % 120}", i))
            segments.update(segments_in(tmp_path))
            i += 1
            time.sleep(0.001)
        assert store.count() == 120  # in LMDB, and no checkpoint was asked for
        assert len(segments) >= 3  # the log moved on to new segments as it went
        assert lww_values(store) == {f"k{j % 120}": j for j in range(i - 120, i)}
    finally:
        store.close()
    store = LmdbStore(tmp_path)
    try:
        assert store.count() == 120
    finally:
        store.close()


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


def test_a_store_of_the_format_before_the_log_is_read_and_upgraded(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"replica-store/1", db=env.open_db(b"meta", txn=txn))
        data = encode_state(LWW, "k", LWWRegister(1, 1, "n1"))
        txn.put(b"k", data, db=env.open_db(b"lww", txn=txn))
    env.close()
    store = LmdbStore(tmp_path)
    store.close()
    assert format_of(tmp_path) == FORMAT_MARKER
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"k": 1}
    finally:
        store.close()


def test_a_log_record_gives_its_entries_in_order() -> None:
    states = sample_states()
    record = encode_batch(
        [*((ks, key, state) for (ks, key), state in states.items()), (KV, "gone", None)]
    )
    entries = log_entries(record)
    assert [(ks, key) for ks, key, _ in entries] == [*states, (KV, "gone")]
    assert [state_of(ks, key, stored) for ks, key, stored in entries[:-1]] == list(states.values())
    assert entries[-1][2] is None
    assert encode_commit({**states, (KV, "gone"): None}) == record


@given(keyed_state=keyed_states)
def test_a_logged_state_decodes_to_itself(keyed_state: tuple[str, Any]) -> None:
    keyspace, state = keyed_state
    ((space, key, stored),) = log_entries(encode_batch([(keyspace, "k", state)]))
    assert (space, key) == (keyspace, "k")
    assert state_of(keyspace, key, stored) == state
    assert state_of(keyspace, key, stored, trusted=False) == state
    assert encode_commit({(keyspace, "k"): state}) == encode_batch([(keyspace, "k", state)])


def test_the_per_key_log_records_of_format_2_still_read() -> None:
    for (keyspace, key), state in sample_states().items():
        ((space, name, stored),) = log_entries(encode_state(keyspace, key, state))
        assert (space, name, state_of(space, name, stored)) == (keyspace, key, state)
    assert log_entries(encode_removal(MVCC, "gone")) == [(MVCC, "gone", None)]


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
        bytes([0x7F, FORMAT_VERSION, 0x09]) + b"k",
    ],
)
def test_a_log_record_that_is_not_ours_is_a_storage_error(record: bytes) -> None:
    with pytest.raises(StorageError):
        log_entries(record)


def test_a_log_of_format_2_is_replayed_and_upgraded(tmp_path: Path) -> None:
    LmdbStore(tmp_path).close()
    put_raw(tmp_path, b"meta", b"format", b"replica-store/2")
    put_raw(tmp_path, b"lww", b"gone", encode_state(LWW, "gone", LWWRegister(1, 1, "n1")))
    records = [encode_state(LWW, "k", LWWRegister(7, 1, "n1")), encode_removal(LWW, "gone")]
    (tmp_path / "log.000001").write_bytes(frame(records))
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"k": 7}
    finally:
        store.close()
    assert format_of(tmp_path) == FORMAT_MARKER
    store = LmdbStore(tmp_path)
    try:
        assert lww_values(store) == {"k": 7}
        assert store.count() == 1
    finally:
        store.close()


def segment_sizes(path: Path) -> list[int]:
    return [(path / name).stat().st_size for name in segments_in(path)]


def test_zeros_for_each_segment_follow_what_the_last_one_took(tmp_path: Path) -> None:
    mib = 1 << 20
    store = LmdbStore(tmp_path, segment_bytes=8 * mib)
    try:
        put(store, ("small", 1))
        assert segment_sizes(tmp_path) == [8 * mib]  # a writer's first: a whole segment
        store.checkpoint()
        assert segment_sizes(tmp_path) == [mib]  # it took a few bytes: the least
        put(store, ("big", "x" * 1_600_000))
        store.checkpoint()
        assert segment_sizes(tmp_path) == [4 * mib]  # twice 1.6 MB, in whole MiB
        put(store, ("bigger", "x" * 6_000_000))
        store.checkpoint()
        assert segment_sizes(tmp_path) == [8 * mib]  # at most a segment
        assert lww_values(store) == {"small": 1, "big": "x" * 1_600_000, "bigger": "x" * 6_000_000}
    finally:
        store.close()
