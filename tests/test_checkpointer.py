"""Checkpoints into real LMDB: latest states only, in chunks, and none once the writer is gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replica.crdt.lww import LWWRegister
from replica.durable.commit_log import Segment, frame
from replica.durable.errors import CheckpointFailed
from replica.durable.lmdb_checkpoint import CHECKPOINT_KEY, open_environment, write_sealed
from replica.durable.records import decode_state, encode_commit
from tests.names import LWW, MV

MAP_SIZE = 1 << 26


def lww(value: Any, timestamp: int) -> LWWRegister:
    return LWWRegister(value, timestamp, "n1")


def batch(entries: list[tuple[str, str, Any]]) -> bytes:
    """One commit's log record of (keyspace, key, state or None)."""
    return encode_commit({(keyspace, key): state for keyspace, key, state in entries})


def write_segment(directory: Path, seq: int, records: list[bytes]) -> None:
    segment = Segment.create(directory, seq)
    for record in records:
        segment.append(frame([record]))
    segment.close()


def lmdb_contents(env: Any) -> tuple[dict[str, Any], bytes | None]:
    """Every LWW key's value in LMDB, and the checkpoint marker (a write txn: it opens dbs)."""
    with env.begin(write=True) as txn:
        db = env.open_db(LWW.encode(), txn=txn)
        values = {}
        for data in txn.cursor(db=db).iternext(keys=False):
            key, state = decode_state(LWW, data)
            values[key] = state.value
        marker = txn.get(CHECKPOINT_KEY, db=env.open_db(b"meta", txn=txn))
    return values, marker


def rewritten_keys(directory: Path, keys: int) -> dict[str, Any]:
    """Segments 1 and 2 writing `keys` keys three times over; what each key ends as."""
    rounds = [
        batch([(LWW, f"k{i:04}", lww(f"v{i}-{r}", r)) for i in range(keys)]) for r in range(3)
    ]
    write_segment(directory, 1, rounds[:2])
    write_segment(directory, 2, rounds[2:])
    return {f"k{i:04}": f"v{i}-2" for i in range(keys)}


@pytest.mark.parametrize("paced", [False, True])
def test_a_checkpoint_in_chunks_stores_each_keys_latest_state(tmp_path: Path, paced: bool) -> None:
    expected = rewritten_keys(tmp_path, 25)
    env = open_environment(tmp_path, MAP_SIZE)
    try:
        write_sealed(env, tmp_path, [1, 2], paced=paced, chunk_keys=4)
        assert lmdb_contents(env) == (expected, b"2")
    finally:
        env.close()


def test_a_removal_after_a_state_removes_the_key(tmp_path: Path) -> None:
    write_segment(
        tmp_path,
        1,
        [
            batch([(LWW, "gone", lww("a", 1)), (LWW, "kept", lww("b", 1))]),
            batch([(LWW, "gone", None)]),
            batch([(MV, "other", None)]),
        ],
    )
    env = open_environment(tmp_path, MAP_SIZE)
    try:
        write_sealed(env, tmp_path, [1], chunk_keys=1)
        assert lmdb_contents(env) == ({"kept": "b"}, b"1")
    finally:
        env.close()


def test_a_checkpoint_of_nothing_still_records_its_segments(tmp_path: Path) -> None:
    write_segment(tmp_path, 3, [])
    env = open_environment(tmp_path, MAP_SIZE)
    try:
        write_sealed(env, tmp_path, [3])
        assert lmdb_contents(env) == ({}, b"3")
    finally:
        env.close()


def test_once_the_writer_is_gone_no_further_chunk_is_committed(tmp_path: Path) -> None:
    rewritten_keys(tmp_path, 12)
    checks: list[bool] = []

    def writer_alive() -> bool:  # alive for the first chunk only
        checks.append(not checks)
        return checks[-1]

    env = open_environment(tmp_path, MAP_SIZE)
    try:
        with pytest.raises(CheckpointFailed, match="log writer is gone"):
            write_sealed(env, tmp_path, [1, 2], chunk_keys=5, writer_alive=writer_alive)
        values, marker = lmdb_contents(env)
        assert sorted(values) == [f"k{i:04}" for i in range(5)]  # the first chunk alone
        assert marker is None  # so a restart replays segments 1 and 2 over it
    finally:
        env.close()
