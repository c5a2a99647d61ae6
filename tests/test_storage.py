"""The durable store: records round-trip, and a data dir that is not ours stops the node."""

from __future__ import annotations

import gc
import subprocess
from pathlib import Path
from typing import Any

import lmdb
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.cli import _recover
from replica.crdt.lww import LWWRegister
from replica.crdt.mv_register import MVRegister
from replica.crdt.version_vector import Dot, VersionVector
from replica.digest import BUCKETS
from replica.keyspaces import KV, LWW, MV, MVCC, Keyspaces
from replica.node import Node
from replica.storage import (
    FORMAT_VERSION,
    TYPE_TAGS,
    LmdbStore,
    MemoryStore,
    StorageError,
    decode_state,
    encode_state,
    open_store,
)
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
    store.store_batch([(ks, key, encode_state(ks, key, s)) for (ks, key), s in states.items()])


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
    store.store_batch([(LWW, "k", encode_state(LWW, "k", first))])
    store.store_batch([(LWW, "k", encode_state(LWW, "k", second))])
    assert loaded(store) == {(LWW, "k"): second}
    store.remove([(LWW, "k"), (MV, "absent")])
    assert loaded(store) == {}
    store.close()


def test_the_encoding_starts_with_a_type_tag_and_a_version() -> None:
    data = encode_state(MV, "k", MVRegister())
    assert data[0] == TYPE_TAGS[MV]
    assert data[1] == FORMAT_VERSION


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


def corrupt_one_record(path: Path) -> None:
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"k", b"\x01\x01{broken", db=env.open_db(b"mv", txn=txn))
    env.close()


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
    store.store_batch([(MV, "bad", record(MV, [{"value": 1, "dot": "ab", "past": {}}]))])
    store.close()
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
    env = lmdb.open(str(tmp_path), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"format", b"replica-store/9", db=env.open_db(b"meta", txn=txn))
    env.close()
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


@pytest.mark.parametrize("damage", ["corrupt-record", "foreign-store", "other-files"])
def test_serve_over_a_bad_data_dir_exits_2_with_one_line(tmp_path: Path, damage: str) -> None:
    config = one_node_config(tmp_path)
    data = tmp_path / "data"
    if damage == "corrupt-record":
        LmdbStore(data).close()
        corrupt_one_record(data)
    elif damage == "foreign-store":
        env = lmdb.open(str(data))
        with env.begin(write=True) as txn:
            txn.put(b"theirs", b"data")
        env.close()
    else:
        data.mkdir()
        (data / "notes.txt").write_text("mine")
    result = serve_once(config)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replica: storage error: "), result.stderr
