"""Writing sealed log segments into LMDB: the checkpoint itself, whoever runs it.

Only the latest state of each key the segments hold is written, in key order,
`CHUNK_KEYS` keys to a synced transaction, so a key written a hundred times
since the last checkpoint costs one put and the log writer's synced appends
never queue behind more than one transaction's pages.  The last transaction
records the newest segment covered (`CHECKPOINT_KEY`), which recovery reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from replica.durable.commit_log import read_segment, segment_name
from replica.durable.errors import CheckpointFailed
from replica.durable.records import KEYSPACES, db_key_of, encode_stored, log_entries

CHUNK_KEYS = 10_000
"""Keys a checkpoint puts in one LMDB transaction: about a megabyte of pages to sync."""
CHECKPOINT_KEY = b"checkpointed_segment"
"""The meta key of the newest segment LMDB holds, written by each checkpoint's transaction."""


def open_environment(path: Path, map_size: int) -> Any:
    """A data dir's LMDB environment, opened the same way by the node and its checkpointer.

    Synced commits: a checkpoint must be on disk before its segments are deleted.
    """
    import lmdb

    return lmdb.open(
        str(path),
        map_size=map_size,
        max_dbs=len(KEYSPACES) + 1,
        subdir=True,
        sync=True,
        metasync=True,
        readahead=False,
    )


def write_sealed(
    env: Any,
    path: Path,
    seqs: list[int],
    *,
    paced: bool = False,
    chunk_keys: int = CHUNK_KEYS,
    writer_alive: Callable[[], bool] = lambda: True,
) -> int:
    """The latest state of each key in segments `seqs` into LMDB, `chunk_keys` keys a transaction.

    Returns how many keys it wrote (or removed).

    When `paced` (the log writer's periodic checkpoints, while the node
    serves) each transaction is followed by a pause as long as its commit
    took, so the writer's synced appends get the disk between chunks;
    checkpoints at start and at close go at full speed.
    Only the last transaction records the newest segment covered; a crash
    before it leaves LMDB holding some states the segments also hold, which
    the next start replays over them, harmlessly.

    Each transaction first checks `writer_alive`, holding LMDB's write lock:
    once the log writer is gone a restarted node may be checkpointing the
    same segments with newer ones after them, and a chunk of this older
    checkpoint committed after that would put older states back.
    """
    latest = _latest_states(path, seqs, env.max_key_size())
    chunks = [chunk for keyspace in KEYSPACES for chunk in _chunks(keyspace, latest, chunk_keys)]
    chunks = chunks or [(KEYSPACES[0], [])]
    for i, (keyspace, items) in enumerate(chunks):
        last = i == len(chunks) - 1
        started = time.monotonic()
        _write_chunk(env, keyspace, items, seqs[-1] if last else None, writer_alive)
        if paced and not last:
            time.sleep(time.monotonic() - started)
    return sum(len(items) for _, items in chunks)


def _write_chunk(
    env: Any,
    keyspace: str,
    items: list[tuple[bytes, bytes | None]],
    covered: int | None,
    writer_alive: Callable[[], bool],
) -> None:
    """One synced transaction: `items` into `keyspace`, and the newest segment `covered`."""
    with env.begin(write=True) as txn:
        if not writer_alive():
            raise CheckpointFailed("the log writer is gone: checkpoint abandoned")
        db = env.open_db(keyspace.encode(), txn=txn)
        puts = [(db_key, value) for db_key, value in items if value is not None]
        if puts:
            with txn.cursor(db=db) as cursor:
                cursor.putmulti(puts)
        for db_key, value in items:
            if value is None:
                txn.delete(db_key, db=db)
        if covered is not None:
            txn.put(CHECKPOINT_KEY, str(covered).encode(), db=env.open_db(b"meta", txn=txn))


def _latest_states(
    path: Path, seqs: list[int], max_key: int
) -> dict[str, dict[bytes, bytes | None]]:
    """{keyspace: {LMDB key: LMDB value, None when the key is gone}} of each key's last entry.

    Read newest first, so only the entry that stays is encoded.
    """
    latest: dict[str, dict[bytes, bytes | None]] = {keyspace: {} for keyspace in KEYSPACES}
    for seq in reversed(seqs):
        for payload in reversed(read_segment(path / segment_name(seq), cut_tail=False)):
            for keyspace, key, stored in reversed(log_entries(payload)):
                seen = latest[keyspace]
                db_key = db_key_of(key.encode(), max_key)
                if db_key not in seen:
                    seen[db_key] = None if stored is None else encode_stored(keyspace, key, stored)
    return latest


def _chunks(
    keyspace: str, latest: dict[str, dict[bytes, bytes | None]], size: int
) -> Iterator[tuple[str, list[tuple[bytes, bytes | None]]]]:
    items = sorted(latest[keyspace].items())
    for start in range(0, len(items), size):
        yield keyspace, items[start : start + size]
