"""Durable storage of key states, behind a narrow interface.

The node keeps its keys in memory; a store only has to load everything at
start, save a batch of key states atomically, and forget keys.  `LmdbStore`
keeps them in the node's data dir (LMDB is what Akka Distributed Data uses for
its durable keys); `MemoryStore` is the store of a node without a data dir,
where nothing outlives the process.

A durable node acknowledges a write only once its group commit is on disk, so
the cost of making a commit durable bounds the node's write rate.  A synced
LMDB transaction writes every B-tree page it touched, scattered over the file,
then the meta page: about 2.3 ms for a group of a hundred keys, whatever their
size.  So a commit is made durable by appending it to a commit log
(`replica.commit_log`) and syncing that one file, a few tenths of a
millisecond, and LMDB is written behind the log by checkpoints.  A checkpoint
thread of the store, every few seconds or once the log's current segment is
large, moves appends to a new segment and has the checkpointer process
(`replica.checkpointer`) write the records of the closed segments into LMDB
in one synced transaction, in log order so that the latest record of a key
is the one that stays; then it deletes them.  Commits never wait for it, and
the per-record work runs outside the node's interpreter.  The node holds no
copy of what it logged (keeping the latest record per key in memory cost
about 100 bytes per recently written key).  LMDB still syncs each of its own
commits: only checkpoints commit to it, and a checkpoint must be on disk
before the segments it covers are deleted, so not syncing would save
nothing.  While checkpoints fail, commits are refused too (see
`CheckpointFailed`).

LMDB rather than the log alone, because it bounds the log and keeps loading a
scan of one B-tree, however long the node has run.  Recovery loads LMDB and
replays the segments that remain, in order (every record is a key's whole
state, so the latest one wins); the transaction of a checkpoint records the
newest segment it covers, so segments that a crash left behind after their
checkpoint are deleted, not replayed.  A clean close checkpoints everything, so
the next start replays nothing.

Every stored value starts with a type tag and a format version byte, then the
state as JSON (the wire form, or for MV registers a compact one), so a later
format can still read what an older one wrote.  A record that cannot be
decoded, or a data dir that is not ours, raises `StorageError` instead of
being skipped: starting with part of the data would look like success and
silently lose acknowledged writes.  For the same reason a data dir is locked
while a store has it open: two processes appending to one log would each
overwrite the other's records.

Each incarnation of a data dir has an actor id, made when the store is
created empty.  MV dots carry it instead of the bare node id, so a node whose
data dir was wiped starts a fresh sequence of dots and never issues a dot its
previous incarnation already gave to a different write.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import orjson

from replica.commit_log import (
    CorruptLog,
    Segment,
    frame,
    list_segments,
    parse,
    read_segment,
    remove_segments,
    segment_name,
    segment_seq,
)
from replica.crdt.clocked_siblings import ClockedSiblings
from replica.crdt.lww import LWWRegister
from replica.crdt.malformed import Malformed
from replica.crdt.mv_register import MVRegister
from replica.crdt.mvcc import VersionChain
from replica.keyspaces import KV, LWW, MV, MVCC

log = logging.getLogger("replica.storage")

KEYSPACES = (MV, KV, MVCC, LWW)
TYPE_TAGS = {MV: 0x01, KV: 0x02, MVCC: 0x03, LWW: 0x04}
KEYSPACE_OF_TAG = {tag: keyspace for keyspace, tag in TYPE_TAGS.items()}
REMOVAL_TAG = 0x7F
"""The tag of a log record saying a key is gone: tag, version, the keyspace's tag, the key."""


def _mv_from_record(raw: Any) -> MVRegister:
    """A stored MV state, validated like a peer's: the compact siblings back in wire form."""
    if isinstance(raw, list):
        raw = [_compact_to_wire(entry) if isinstance(entry, list) else entry for entry in raw]
    return MVRegister.from_wire(raw)


def _compact_to_wire(entry: list[Any]) -> dict[str, Any]:
    if len(entry) != 4:
        raise Malformed("a stored MV sibling must be [value, node, counter, past]")
    value, node, counter, past = entry
    return {"value": value, "dot": [node, counter], "past": past}


DECODERS: dict[str, Any] = {
    MV: _mv_from_record,
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
HEADERS = {keyspace: bytes((tag, FORMAT_VERSION)) for keyspace, tag in TYPE_TAGS.items()}
STORED_FORMS: dict[str, Any] = {
    MV: MVRegister.to_stored,  # compact: every commit encodes on the event loop
    KV: ClockedSiblings.to_wire,
    MVCC: VersionChain.to_wire,
    LWW: LWWRegister.to_wire,
}
"""How each keyspace's states are written; `STORED_DECODERS` reads them back."""
FORMAT_MARKER = b"replica-store/2"
READABLE_MARKERS = {b"replica-store/1", FORMAT_MARKER}
"""/1 is the same database without a commit log.  Opening it writes /2, which a
replica that knows nothing of the log refuses rather than start without it."""
CHECKPOINT_KEY = b"checkpointed_segment"
DEFAULT_MAP_SIZE = 64 << 30  # address space only: the file grows as data does
LMDB_FILES = {"data.mdb", "lock.mdb"}
LOCK_FILE = "replica.lock"
SEGMENT_BYTES = 32 << 20
CHECKPOINT_INTERVAL_S = 5.0

KeyRef = tuple[str, str]
Record = tuple[str, str, bytes]
"""(keyspace, key, encoded state) as `store_batch` takes it."""


class StorageError(Exception):
    """A data dir the node must not start from; `str()` is one line saying why."""


class CheckpointFailed(Exception):
    """Commits are refused while checkpoints fail.

    The log would otherwise grow without bound, and the memory that remembers
    what it holds with it, with nothing to show for it until the disk filled.
    """


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
    """A key's state as stored: tag, version, then JSON `[key, stored form]`.

    The stored form is the wire form, except for MV registers, whose compact
    form (`MVRegister.to_stored`) is cheaper to build; both forms load.

    The key travels inside the value because LMDB bounds key length; longer
    keys are indexed by their hash (see `_db_key`).
    """
    return HEADERS[keyspace] + orjson.dumps([key, STORED_FORMS[keyspace](state)])


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


def encode_removal(keyspace: str, key: str) -> bytes:
    """The log record saying `key` is gone (LMDB simply deletes it; a log must say so)."""
    return bytes((REMOVAL_TAG, FORMAT_VERSION, TYPE_TAGS[keyspace])) + key.encode()


def log_record_key(data: bytes) -> tuple[str, bytes]:
    """(keyspace, key as UTF-8) of a log record, without decoding its state.

    Replay only needs to know which key each record is for: only the latest
    record of a key is ever decoded.  encode_state writes `["key",` with
    orjson, which escapes only quotes, backslashes and control characters, so
    a key without a backslash is the UTF-8 up to the next quote.
    """
    keyspace = KEYSPACE_OF_TAG.get(data[0]) if len(data) > 3 else None
    if keyspace is not None and data[1] == FORMAT_VERSION and data[2:4] == b'["':
        end = data.find(b'"', 4)
        if end > 0 and data.find(b"\\", 4, end) == -1:
            return keyspace, data[4:end]
    return _log_record_key_slowly(data)


def _log_record_key_slowly(data: bytes) -> tuple[str, bytes]:
    if len(data) < 3 or data[1] != FORMAT_VERSION:
        raise StorageError("a log record is too short or of an unknown format version")
    if data[0] == REMOVAL_TAG:
        keyspace = KEYSPACE_OF_TAG.get(data[2])
        if keyspace is None:
            raise StorageError(f"a removal log record has unknown type tag {data[2]:#04x}")
        return keyspace, data[3:]
    keyspace = KEYSPACE_OF_TAG.get(data[0])
    if keyspace is None:
        raise StorageError(f"a log record has unknown type tag {data[0]:#04x}")
    key, _ = decode_state(keyspace, data, trusted=True)  # a key with escapes: decode it all
    return keyspace, key.encode()


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


# -- what the log holds --------------------------------------------------------------------


class KeyChanges:
    """The latest record of each key changed since some point, keyed as LMDB keys them.

    A state replaces an earlier state or removal of its key, and a removal an
    earlier state: keeping only the latest is what lets recovery decode each
    key once.  It is built only while loading; checkpoints stream the log.
    """

    __slots__ = ("puts", "removals")

    def __init__(self) -> None:
        self.puts: dict[str, dict[bytes, bytes]] = {ks: {} for ks in KEYSPACES}
        self.removals: dict[str, set[bytes]] = {ks: set() for ks in KEYSPACES}

    def __bool__(self) -> bool:
        return any(self.puts.values()) or any(self.removals.values())

    def put(self, keyspace: str, db_key: bytes, data: bytes) -> None:
        self.puts[keyspace][db_key] = data
        if self.removals[keyspace]:
            self.removals[keyspace].discard(db_key)

    def remove(self, keyspace: str, db_key: bytes) -> None:
        self.puts[keyspace].pop(db_key, None)
        self.removals[keyspace].add(db_key)

    def shadowed(self, keyspace: str) -> set[bytes]:
        """The keys whose LMDB record is out of date."""
        return self.puts[keyspace].keys() | self.removals[keyspace]


# -- LMDB behind a commit log --------------------------------------------------------------


class LmdbStore:
    """A data dir of one LMDB environment and a commit log; see the module docstring.

    LMDB has a named database per keyspace and one for metadata.  Commits come
    from one thread at a time (the node's commit thread); checkpoints run on a
    thread of their own, started by the first commit.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        segment_bytes: int = SEGMENT_BYTES,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        preallocate: bool = True,
    ) -> None:
        import lmdb

        self._lmdb = lmdb
        self.path = Path(path)
        self.commits = 0
        self.checkpoints = 0
        self._segment_bytes = segment_bytes
        self._interval = checkpoint_interval_s
        self._map_size = map_size
        self._writer: Any = None  # the checkpointer process's handle, from the first checkpoint
        self._preallocate = segment_bytes if preallocate else 0
        self._append_lock = threading.Lock()  # the current segment and what it holds
        self._checkpoint_lock = threading.Lock()  # one checkpoint at a time
        self._segment: Segment | None = None
        self._sealed_seqs: list[int] = []
        self._read_at_open: dict[int, list[bytes]] = {}  # live segments, until loaded
        self._failure: str | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._checkpointer: threading.Thread | None = None
        self._closed = False
        self.env: Any = None
        _check_dir(self.path)  # before the lock file is made in a dir that is not ours
        self._lock_fd = _lock_dir(self.path)
        try:
            self._open_lmdb(_check_dir(self.path), map_size)  # what it holds, now it is ours
            self._open_log()
        except BaseException:
            self._release()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _open_lmdb(self, fresh: bool, map_size: int) -> None:
        lmdb = self._lmdb
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(KEYSPACES) + 1,
                subdir=True,
                sync=True,  # a checkpoint must be on disk before its segments go
                metasync=True,
                readahead=False,
            )
        except lmdb.Error as exc:
            raise StorageError(f"cannot open data dir {self.path}: {exc}") from None
        try:
            self._open_databases(fresh)
        except lmdb.Error as exc:
            raise StorageError(f"cannot read data dir {self.path}: {exc}") from None
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
            if marker is not None and marker not in READABLE_MARKERS:
                raise StorageError(
                    f"data dir {self.path} holds format {marker!r}, not {FORMAT_MARKER!r}"
                )
            self._dbs = {ks: self.env.open_db(ks.encode(), txn=txn) for ks in KEYSPACES}
            if marker != FORMAT_MARKER:
                txn.put(b"format", FORMAT_MARKER, db=self._meta)

    def _open_log(self) -> None:
        """Replay the segments no checkpoint covers, then open a new one for appends.

        Appends never go to an old segment: its tail may have been torn.
        """
        with self.env.begin() as txn:
            marker = bytes(txn.get(CHECKPOINT_KEY, b"0", db=self._meta))
        if not marker.isdigit():
            raise StorageError(f"data dir {self.path} has a damaged checkpoint marker {marker!r}")
        done = int(marker)
        try:
            seqs = list_segments(self.path)
            # a crash came between a checkpoint and the deletion of what it covered
            remove_segments(self.path, (seq for seq in seqs if seq <= done))
            live = [seq for seq in seqs if seq > done]
            started, records = time.perf_counter(), 0
            for seq in live:  # cuts a torn tail off, refuses a damaged log
                self._read_at_open[seq] = read_segment(self.path / segment_name(seq))
                records += len(self._read_at_open[seq])
            if records:
                elapsed_ms = (time.perf_counter() - started) * 1000
                log.info(
                    "replayed %d log records of %d segments in %.0f ms",
                    records,
                    len(live),
                    elapsed_ms,
                )
            self._sealed_seqs = live
            self._segment = Segment.create(self.path, max([done, *seqs]) + 1, self._preallocate)
        except CorruptLog as exc:
            raise StorageError(f"data dir {self.path}: {exc}") from None
        except OSError as exc:
            raise StorageError(
                f"cannot read the log in data dir {self.path}: {exc.strerror or exc}"
            ) from None

    def _replay(self, payloads: list[bytes], changes: KeyChanges) -> None:
        max_key = self._max_key
        for data in payloads:
            keyspace, raw = log_record_key(data)
            db_key = raw if len(raw) <= max_key else self._db_key_of(raw)
            if data[0] == REMOVAL_TAG:
                changes.remove(keyspace, db_key)
            else:
                changes.put(keyspace, db_key, data)

    # -- the interface -----------------------------------------------------------------------

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        """LMDB's records the log has not replaced, then the latest record of each logged key."""
        with self._checkpoint_lock, self._append_lock:
            logged = KeyChanges()
            for seq in self._sealed_seqs:
                payloads = self._read_at_open.pop(seq, None)  # read once at start, not twice
                if payloads is None:
                    payloads = read_segment(self.path / segment_name(seq))
                self._replay(payloads, logged)
            if self._segment is not None and self._segment.size:
                current = self._segment.path.read_bytes()[: self._segment.size]
                self._replay(parse(current)[0], logged)
            txn = self.env.begin()  # LMDB as of the last checkpoint: the log holds the rest
        with txn:
            for keyspace, db in self._dbs.items():
                yield from _load_database(txn, keyspace, db, logged.shadowed(keyspace))
        for keyspace in KEYSPACES:
            for data in logged.puts[keyspace].values():
                key, state = decode_state(keyspace, data, trusted=True)
                yield keyspace, key, state

    def store_batch(self, items: list[Record]) -> None:
        """Append the records to the log and sync it: durable now, in LMDB after a checkpoint."""
        self._append(frame([data for _, _, data in items]))

    def remove(self, keys: Iterable[KeyRef]) -> None:
        removals = [encode_removal(keyspace, key) for keyspace, key in keys]
        if removals:
            self._append(frame(removals))

    def get_meta(self, name: str) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(name.encode(), db=self._meta)
        return None if value is None else bytes(value)

    def set_meta(self, name: str, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(name.encode(), value, db=self._meta)

    def count(self) -> int:
        """The keys in LMDB, as of the last checkpoint (closing checkpoints everything)."""
        with self.env.begin() as txn:
            return sum(txn.stat(db)["entries"] for db in self._dbs.values())

    def close(self) -> None:
        """Checkpoint everything, so the next start replays nothing; then let the data dir go.

        A checkpoint that fails here loses nothing: the log keeps every
        commit, and the next start replays it.
        """
        if self._closed:
            return
        self._closed = True
        self._stop_checkpointer()
        try:
            self.checkpoint(final=True)
        except Exception:
            log.error("checkpoint at close failed (the log keeps every commit): %s", self._failure)
        finally:
            self._release()

    # -- commits -----------------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        """One batch of framed records to the current segment, synced.

        Nothing about the records is kept in memory: a checkpoint reads the
        segments it seals back from disk (just written, so from the page
        cache), which keeps a node's memory from growing with every key it
        wrote since the last checkpoint.
        """
        if self._failure is not None:
            raise CheckpointFailed(f"checkpoints are failing: {self._failure}")
        with self._append_lock:
            segment = self._segment
            if segment is None:
                raise StorageError(f"the store of {self.path} is closed")
            if self._checkpointer is None:
                self._start_checkpointer()
            try:
                segment.append(data)
            except BaseException:
                self._wake.set()  # the checkpointer moves appends to a new segment
                raise
            full = segment.size >= self._segment_bytes
        self.commits += 1
        if full:
            self._wake.set()

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, *, final: bool = False) -> None:
        """Move appends to a new segment, write the closed ones to LMDB, delete them.

        `final` closes the log without opening a new segment: the store is
        closing.  A failure is remembered, and refuses commits, until a
        checkpoint succeeds.
        """
        with self._checkpoint_lock:
            try:
                self._rotate(final)
                if self._sealed_seqs:
                    self._write_sealed()
            except Exception as exc:
                self._failure = f"{type(exc).__name__}: {exc}"
                raise
            self._failure = None

    def _rotate(self, final: bool) -> None:
        current = self._segment
        if current is None or (not final and current.size == 0 and not current.broken):
            return
        following = None
        if not final:  # made outside the lock: commits go on meanwhile
            following = Segment.create(self.path, current.seq + 1, self._preallocate)
        with self._append_lock:
            self._segment = following
        current.close()
        self._sealed_seqs.append(current.seq)

    def _write_sealed(self) -> None:
        """One synced LMDB transaction for every closed segment, which then go.

        The checkpointer process writes them (see `replica.checkpointer`), so
        the node's interpreter does none of the per-record work.
        """
        if self._writer is None:
            from replica.checkpointer import Checkpointer

            self._writer = Checkpointer(self.path, self._map_size)
        self._writer.checkpoint(self._sealed_seqs)
        self.checkpoints += 1
        remove_segments(self.path, self._sealed_seqs)
        self._sealed_seqs = []
        self._read_at_open.clear()

    def _start_checkpointer(self) -> None:
        thread = threading.Thread(target=self._checkpoint_forever, name="checkpoint", daemon=True)
        self._checkpointer = thread
        thread.start()

    def _checkpoint_forever(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.checkpoint()
            except Exception:
                log.error(
                    "checkpoint failed, commits refused until one succeeds: %s", self._failure
                )

    def _stop_checkpointer(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._checkpointer is not None:
            self._checkpointer.join()

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.close()
        with self._append_lock:
            segment, self._segment = self._segment, None
        if segment is not None:
            segment.close()
        if self.env is not None:
            self.env.close()
        os.close(self._lock_fd)

    # -- keys --------------------------------------------------------------------------------

    def _db_key_of(self, raw: bytes) -> bytes:
        return db_key_of(raw, self._max_key)


def db_key_of(raw: bytes, max_key: int) -> bytes:
    """The LMDB key of a key's UTF-8: itself, or its hash when LMDB would refuse its length."""
    if len(raw) <= max_key:
        return raw
    # 0xff never occurs in UTF-8, so hashed keys cannot collide with plain ones
    return b"\xff" + hashlib.blake2b(raw, digest_size=32).digest()


def _load_database(
    txn: Any, keyspace: str, db: Any, shadowed: set[bytes]
) -> Iterator[tuple[str, str, Any]]:
    cursor = txn.cursor(db=db)
    if not shadowed:
        for data in cursor.iternext(keys=False):
            key, state = decode_state(keyspace, data, trusted=True)
            yield keyspace, key, state
        return
    for db_key, data in cursor.iternext():
        if db_key not in shadowed:
            key, state = decode_state(keyspace, data, trusted=True)
            yield keyspace, key, state


def _check_dir(path: Path) -> bool:
    """Make sure `path` is a directory we may use; True when it holds no store yet."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        entries = set(os.listdir(path))
    except OSError as exc:
        raise StorageError(f"cannot use data dir {path}: {exc.strerror or exc}") from None
    if "data.mdb" in entries:
        return False
    if any(segment_seq(name) is not None for name in entries):
        raise StorageError(f"data dir {path} holds log segments but no database")
    if entries - LMDB_FILES - {LOCK_FILE}:
        raise StorageError(f"data dir {path} holds other files and no replica store")
    return True


def _lock_dir(path: Path) -> int:
    """An exclusive lock on the data dir, held as long as the returned descriptor is open."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot use data dir {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(f"data dir {path} is in use by another process") from None
    except OSError as exc:
        os.close(fd)
        raise StorageError(f"cannot lock data dir {path}: {exc.strerror or exc}") from None
    return fd


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
