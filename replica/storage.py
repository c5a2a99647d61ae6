"""Durable storage of key states, behind a narrow interface.

The node keeps its keys in memory; a store only has to load everything at
start, save a batch of key states atomically, and forget keys.  `LmdbStore`
keeps them in one LMDB environment in the node's data dir (LMDB is what Akka
Distributed Data uses for its durable keys); `MemoryStore` is the store of a
node without a data dir, where nothing outlives the process.

Every stored value starts with a type tag and a format version byte, then the
state's wire form as JSON, so a later format can still read what an older
one wrote.  A record that cannot be decoded, or a data dir that is not ours,
raises `StorageError` instead of being skipped: starting with part of the data
would look like success and silently lose acknowledged writes.

Each incarnation of a data dir has an actor id, made when the store is
created empty.  MV dots carry it instead of the bare node id, so a node whose
data dir was wiped starts a fresh sequence of dots and never issues a dot its
previous incarnation already gave to a different write.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from replica.crdt.clocked_siblings import ClockedSiblings
from replica.crdt.lww import LWWRegister
from replica.crdt.malformed import Malformed
from replica.crdt.mv_register import MVRegister
from replica.crdt.mvcc import VersionChain
from replica.keyspaces import KV, LWW, MV, MVCC

KEYSPACES = (MV, KV, MVCC, LWW)
TYPE_TAGS = {MV: 0x01, KV: 0x02, MVCC: 0x03, LWW: 0x04}
DECODERS: dict[str, Any] = {
    MV: MVRegister.from_wire,
    KV: ClockedSiblings.from_wire,
    MVCC: VersionChain.from_wire,
    LWW: LWWRegister.from_wire,
}
STORED_DECODERS: dict[str, Any] = {
    MV: MVRegister.from_stored,
    KV: ClockedSiblings.from_stored,
    MVCC: VersionChain.from_stored,
    LWW: LWWRegister.from_stored,
}
"""Decoders that trust a record's invariants: every state was normalised before it was stored."""
FORMAT_VERSION = 1
FORMAT_MARKER = b"replica-store/1"
DEFAULT_MAP_SIZE = 64 << 30  # address space only: the file grows as data does
LMDB_FILES = {"data.mdb", "lock.mdb"}

KeyRef = tuple[str, str]
Record = tuple[str, str, bytes]
"""(keyspace, key, encoded state) as `store_batch` takes it."""


class StorageError(Exception):
    """A data dir the node must not start from; `str()` is one line saying why."""


class Store(Protocol):
    """What the node needs of durable storage."""

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        """Every stored (keyspace, key, state), the state decoded."""
        ...

    def store_batch(self, items: list[Record]) -> None:
        """Save every record in one atomic, synced commit."""
        ...

    def remove(self, keys: Iterable[KeyRef]) -> None: ...

    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...

    def close(self) -> None: ...


# -- encoding ------------------------------------------------------------------------------


def encode_state(keyspace: str, key: str, state: Any) -> bytes:
    """A key's state as stored: tag, version, then JSON `[key, wire form]`.

    The key travels inside the value because LMDB bounds key length; longer
    keys are indexed by their hash (see `_db_key`).
    """
    header = bytes((TYPE_TAGS[keyspace], FORMAT_VERSION))
    return header + orjson.dumps([key, state.to_wire()])


def decode_state(keyspace: str, data: bytes, *, trusted: bool = False) -> tuple[str, Any]:
    """(key, state) of a stored value; StorageError when it is not a valid record.

    `trusted` skips validating and normalising the state (see `STORED_DECODERS`),
    which is what recovery uses: only states this node had already normalised
    are ever stored.  The tag and version are checked either way, and a record
    whose structure or types are wrong is still a StorageError.
    """
    if len(data) < 2 or data[0] != TYPE_TAGS[keyspace]:
        raise StorageError(f"a {keyspace} record has the wrong type tag")
    if data[1] != FORMAT_VERSION:
        raise StorageError(f"a {keyspace} record has unknown format version {data[1]}")
    try:
        key, wire = orjson.loads(data[2:])
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise StorageError(f"a {keyspace} record is not valid JSON [key, state]") from None
    if not isinstance(key, str):
        raise StorageError(f"a {keyspace} record's key is not a string")
    decoders = STORED_DECODERS if trusted else DECODERS
    try:
        return key, decoders[keyspace](wire)
    except (Malformed, KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{keyspace} key {key!r} has an undecodable state: {exc}") from None


def new_actor(node_id: str) -> str:
    return f"{node_id}~{secrets.token_hex(3)}"


# -- in memory -----------------------------------------------------------------------------


class MemoryStore:
    """A store that keeps encoded records in a dict: for nodes without a data dir, and tests."""

    def __init__(self) -> None:
        self.records: dict[KeyRef, bytes] = {}
        self.meta: dict[str, bytes] = {}
        self.commits = 0

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        for (keyspace, _), data in list(self.records.items()):
            key, state = decode_state(keyspace, data, trusted=True)
            yield keyspace, key, state

    def store_batch(self, items: list[Record]) -> None:
        for keyspace, key, data in items:
            self.records[(keyspace, key)] = data
        self.commits += 1

    def remove(self, keys: Iterable[KeyRef]) -> None:
        for ref in keys:
            self.records.pop(ref, None)

    def get_meta(self, name: str) -> bytes | None:
        return self.meta.get(name)

    def set_meta(self, name: str, value: bytes) -> None:
        self.meta[name] = value

    def close(self) -> None:
        pass


# -- LMDB ----------------------------------------------------------------------------------


class LmdbStore:
    """One LMDB environment in `path`: a named database per keyspace and one for metadata."""

    def __init__(self, path: str | Path, *, map_size: int = DEFAULT_MAP_SIZE) -> None:
        import lmdb

        self._lmdb = lmdb
        self.path = Path(path)
        self.commits = 0
        fresh = _check_dir(self.path)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(KEYSPACES) + 1,
                subdir=True,
                sync=True,
                metasync=True,
                readahead=False,
            )
        except lmdb.Error as exc:
            raise StorageError(f"cannot open data dir {self.path}: {exc}") from None
        try:
            self._open_databases(fresh)
        except lmdb.Error as exc:
            self.env.close()
            raise StorageError(f"cannot read data dir {self.path}: {exc}") from None
        except StorageError:
            self.env.close()
            raise
        self._max_key = self.env.max_key_size()

    def _open_databases(self, fresh: bool) -> None:
        with self.env.begin(write=True) as txn:
            # An environment with no databases at all holds no data: a first
            # start that died before writing its marker left it, or it is new.
            empty = fresh or txn.stat()["entries"] == 0
            self._meta = self.env.open_db(b"meta", txn=txn)
            marker = txn.get(b"format", db=self._meta)
            if marker is None and not empty:
                raise StorageError(f"data dir {self.path} is an LMDB store that is not ours")
            if marker is not None and marker != FORMAT_MARKER:
                raise StorageError(
                    f"data dir {self.path} holds format {marker!r}, not {FORMAT_MARKER!r}"
                )
            self._dbs = {ks: self.env.open_db(ks.encode(), txn=txn) for ks in KEYSPACES}
            if marker is None:
                txn.put(b"format", FORMAT_MARKER, db=self._meta)

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        with self.env.begin() as txn:
            for keyspace, db in self._dbs.items():
                for data in txn.cursor(db=db).iternext(keys=False):
                    key, state = decode_state(keyspace, data, trusted=True)
                    yield keyspace, key, state

    def store_batch(self, items: list[Record]) -> None:
        """One write transaction; LMDB syncs it to disk before `commit` returns."""
        with self.env.begin(write=True) as txn:
            for keyspace, key, data in items:
                txn.put(self._db_key(key), data, db=self._dbs[keyspace])
        self.commits += 1

    def remove(self, keys: Iterable[KeyRef]) -> None:
        with self.env.begin(write=True) as txn:
            for keyspace, key in keys:
                txn.delete(self._db_key(key), db=self._dbs[keyspace])

    def get_meta(self, name: str) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(name.encode(), db=self._meta)
        return None if value is None else bytes(value)

    def set_meta(self, name: str, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(name.encode(), value, db=self._meta)

    def count(self) -> int:
        with self.env.begin() as txn:
            return sum(txn.stat(db)["entries"] for db in self._dbs.values())

    def close(self) -> None:
        self.env.close()

    def _db_key(self, key: str) -> bytes:
        raw = key.encode()
        if len(raw) <= self._max_key:
            return raw
        # 0xff never occurs in UTF-8, so hashed keys cannot collide with plain ones
        return b"\xff" + hashlib.blake2b(raw, digest_size=32).digest()


def _check_dir(path: Path) -> bool:
    """Make sure `path` is a directory we may use; True when it holds no store yet."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        entries = set(os.listdir(path))
    except OSError as exc:
        raise StorageError(f"cannot use data dir {path}: {exc.strerror or exc}") from None
    if "data.mdb" not in entries and entries - LMDB_FILES:
        raise StorageError(f"data dir {path} holds other files and no replica store")
    return "data.mdb" not in entries


# -- opening -------------------------------------------------------------------------------


def open_store(data_dir: str | Path | None, node_id: str) -> tuple[Store, str]:
    """The node's store and its actor id (a fresh one for a new data dir).

    Without a data dir the store is in memory and the actor is the node id itself.
    """
    if data_dir is None:
        return MemoryStore(), node_id
    store = LmdbStore(data_dir)
    try:
        actor = store.get_meta("actor")
        if actor is None:
            fresh = new_actor(node_id)
            store.set_meta("actor", fresh.encode())
            return store, fresh
        text = actor.decode(errors="replace")
        if not text.startswith(f"{node_id}~"):
            raise StorageError(f"data dir {data_dir} belongs to node {text.split('~')[0]!r}")
        return store, text
    except BaseException:
        store.close()
        raise
