"""Durable storage of key states, behind a narrow interface.

The node keeps its keys in memory; a store only has to load everything at
start and make batches of key states durable.  `LmdbStore` keeps them in the
node's data dir (LMDB is what Akka Distributed Data uses for its durable
keys); `MemoryStore` is the store of a node without a data dir, where
nothing outlives the process.

A durable node acknowledges a write only once its group commit is on disk, so
the cost of making a commit durable bounds the node's write rate.  A synced
LMDB transaction writes every B-tree page it touched, scattered over the file,
then the meta page: about 2.3 ms for a group of a hundred keys, whatever their
size.  So a commit is made durable by appending it to a commit log
(`replica.durable.commit_log`), a few tenths of a millisecond, and LMDB is written
behind the log by checkpoints.  Both are the work of the log writer, a
process of its own (`replica.durable.log_writer`, which says why); the store talks to
it through a `LogLink`.  The node holds no copy of what it logged.

LMDB rather than the log alone, because it bounds the log and keeps loading a
scan of one B-tree, however long the node has run.  Recovery loads LMDB and
replays the segments that remain, in order (every entry is a key's whole
state, so the latest one wins); the transaction of a checkpoint records the
newest segment it covers, so segments that a crash left behind after their
checkpoint are deleted, not replayed.  A clean close checkpoints everything,
so the next start replays nothing.  How states and log records are encoded
is `replica.durable.records`.

A data dir is locked while a store has it open (`replica.durable.data_dir`): two
processes appending to one log would each overwrite the other's records.

Incarnations: no dot is ever issued twice.  MV dots carry an actor id, the
node id and a random suffix, instead of the bare node id, and each
incarnation of a data dir has one (`LmdbStore.begin_incarnation`):

- a dot leaves the node, in a reply or to a peer, only once its commit is
  durable (`replica.durable.durability`), so every dot anyone has seen of an actor
  is in its data dir's log or LMDB;
- a clean stop ends with a checkpoint of everything, after which the store
  writes its clean marker; the next start loads every dot the actor issued,
  and counts on above them under the same actor;
- every start clears the marker, synced, before the node serves anything;
  a start that does not find it (kill -9, a crash, a failed last
  checkpoint), or that salvages a damaged data dir, continues under a new
  actor, distinct from every earlier actor of the data dir (their list is
  kept in meta): whatever the lost life issued, and whatever recovery could
  not read, can then never be issued again to a different write.  A wiped
  data dir gets a new actor the same way.

A node in memory has no data dir and writes as its node id: nothing outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from replica.durable.checkpointer import CHECKPOINT_KEY, CheckpointFailed, open_environment
from replica.durable.commit_log import CorruptLog
from replica.durable.data_dir import LOCK_WAIT_S, check_dir, lock_dir, set_aside_name
from replica.durable.lmdb_file import check_data_file, check_in_child, readable_records
from replica.durable.log_link import Done, LogFailed, LogLink
from replica.durable.log_recovery import recover_log
from replica.durable.log_writer import APPEND, CHECKPOINT, LogSettings
from replica.durable.records import (
    KEYSPACES,
    DamagedStore,
    Entry,
    StorageError,
    db_key_of,
    decode_state,
    encode_batch,
    encode_stored,
    log_entries,
    state_of,
)

__all__ = ["CheckpointFailed", "LmdbStore", "MemoryStore", "StorageError", "Store", "open_store"]

log = logging.getLogger("replica.durable.storage")

FORMAT_MARKER = b"replica-store/4"
READABLE_MARKERS = {b"replica-store/1", b"replica-store/2", b"replica-store/3", FORMAT_MARKER}
"""/1 is the same database without a commit log, /2 logged a record per key
instead of one per commit, /3 wrote values without a checksum.  Opening any
of them writes /4, which a replica that cannot check value checksums
refuses rather than misread."""
CLEAN_STOP_KEY = b"clean"
"""The meta key a clean close sets to b"1": a salvaged start deletes it, as a crash would."""
DATA_FILE = "data.mdb"
DATABASES = [b"meta", *(keyspace.encode() for keyspace in KEYSPACES)]
"""LMDB's named databases: metadata, then one per keyspace in `KEYSPACES` order."""
SALVAGE_HINT = "(replica serve --salvage starts from what is readable)"
LMDB_DAMAGE = ("CorruptedError", "PageNotFoundError", "InvalidError", "VersionMismatchError")
"""The lmdb errors that say the data file's bytes are damaged, not that it cannot be used."""
MANIFEST_META = "log_manifest"
"""Set in meta once the data dir has a log manifest: from then on a missing one is damage."""
ACTOR_KEY, ACTORS_KEY = b"actor", b"actors"
"""The meta keys of the actor of this incarnation, and of every actor the data dir has had."""
DEFAULT_MAP_SIZE = 64 << 30  # address space only: the file grows as data does
SEGMENT_BYTES = 32 << 20
CHECKPOINT_INTERVAL_S = 5.0

KeyRef = tuple[str, str]


class Store(Protocol):
    """What the node needs of durable storage."""

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        """Every stored (keyspace, key, state), the state decoded."""
        ...

    def begin_writes(self) -> None:
        """Get ready for commits: loading is over."""
        ...

    def submit(self, record: bytes, done: Done) -> None:
        """Make a log record (see `records`) durable; `done` gets the result on the loop."""
        ...

    def store_batch(self, entries: list[Entry]) -> None:
        """Make the entries durable together, blocking until they are."""
        ...

    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...

    def status(self) -> dict[str, Any]:
        """What `status` shows of the store, beyond the commits."""
        ...

    def close(self, *, clean: bool = True) -> None:
        """Release the store; `clean` False: the node leaves writes that never became durable."""
        ...


def new_actor(node_id: str, taken: Iterable[str] = ()) -> str:
    """A fresh actor id for `node_id`, none of `taken`."""
    used = set(taken)
    while True:
        actor = f"{node_id}~{secrets.token_hex(3)}"
        if actor not in used:
            return actor


# -- in memory -----------------------------------------------------------------------------


class MemoryStore:
    """A store that keeps encoded states in a dict: for nodes without a data dir, and tests."""

    def __init__(self) -> None:
        self.records: dict[KeyRef, bytes] = {}
        self.meta: dict[str, bytes] = {}
        self.commits = 0

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        for (keyspace, _), data in list(self.records.items()):
            key, state = decode_state(keyspace, data, trusted=True)
            yield keyspace, key, state

    def begin_writes(self) -> None:
        pass

    def submit(self, record: bytes, done: Done) -> None:
        self.store_record(record)
        asyncio.get_running_loop().call_soon(done, None)

    def store_batch(self, entries: list[Entry]) -> None:
        self.store_record(encode_batch(entries))

    def store_record(self, record: bytes) -> None:
        """Apply a log record's entries: the same encoding a durable node logs."""
        for keyspace, key, stored in log_entries(record):
            if stored is None:
                self.records.pop((keyspace, key), None)
            else:
                self.records[(keyspace, key)] = encode_stored(keyspace, key, stored)
        self.commits += 1

    def get_meta(self, name: str) -> bytes | None:
        return self.meta.get(name)

    def set_meta(self, name: str, value: bytes) -> None:
        self.meta[name] = value

    def status(self) -> dict[str, Any]:
        return {}

    def close(self, *, clean: bool = True) -> None:
        pass


# -- what the log holds --------------------------------------------------------------------


class KeyChanges:
    """The latest log entry of each key, keyed as LMDB keys them.

    A state replaces an earlier state or removal of its key, and a removal an
    earlier state: keeping only the latest is what lets recovery decode each
    state once.  It is built only while loading.
    """

    __slots__ = ("puts", "removals")

    def __init__(self) -> None:
        self.puts: dict[str, dict[bytes, tuple[str, Any]]] = {ks: {} for ks in KEYSPACES}
        self.removals: dict[str, set[bytes]] = {ks: set() for ks in KEYSPACES}

    def add(self, keyspace: str, db_key: bytes, key: str, stored: Any) -> None:
        if stored is None:
            self.puts[keyspace].pop(db_key, None)
            self.removals[keyspace].add(db_key)
            return
        self.puts[keyspace][db_key] = (key, stored)
        if self.removals[keyspace]:
            self.removals[keyspace].discard(db_key)

    def shadowed(self, keyspace: str) -> set[bytes]:
        """The keys whose LMDB record is out of date."""
        return self.puts[keyspace].keys() | self.removals[keyspace]


# -- LMDB behind a commit log --------------------------------------------------------------


class LmdbStore:
    """A data dir of one LMDB environment and a commit log; see the module docstring.

    LMDB has a named database per keyspace and one for metadata.  The log
    writer starts with the first commit (or `begin_writes`); from then on
    `load_all` checkpoints first and reads LMDB alone.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        segment_bytes: int = SEGMENT_BYTES,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        preallocate: bool = True,
        lock_wait_s: float = LOCK_WAIT_S,
        salvage: bool = False,
    ) -> None:
        import lmdb

        self._lmdb = lmdb
        self.path = Path(path)
        self._settings = LogSettings(map_size, segment_bytes, checkpoint_interval_s, preallocate)
        self._logged: list[list[bytes]] = []  # the live segments' records, read at open
        self._link: LogLink | None = None
        self._closed = False
        self.env: Any = None
        self._salvage = salvage
        self.salvaged: dict[str, Any] = {}
        self._incarnation = False  # `begin_incarnation` cleared the clean marker
        check_dir(self.path)  # before the lock file is made in a dir that is not ours
        self._lock_fd = lock_dir(self.path, lock_wait_s)
        try:
            self._open_lmdb(check_dir(self.path), map_size)  # what it holds, now it is ours
            self._read_log()
        except BaseException:
            self._release()
            raise

    # -- opening ---------------------------------------------------------------------------

    def _open_lmdb(self, fresh: bool, map_size: int) -> None:
        """Open LMDB, refusing a damaged data file (DamagedStore).

        Under salvage, a data file LMDB cannot read whole is set aside, and
        a new one gets the records it could read, the log the rest; values
        that fail their checksum or cannot be decoded are removed, a copy of
        the file kept.  Either way the start is taken as one after a crash.
        """
        try:
            if not fresh:
                check_data_file(self.path / DATA_FILE)
                check_in_child(self.path, DATABASES)  # a page that crashes LMDB crashes the child
            self._open_environment(fresh, map_size)
            if self._salvage and not fresh:
                self._remove_damaged_values()
        except DamagedStore as exc:
            self._close_environment()
            if not self._salvage:
                raise type(exc)(f"{exc} {SALVAGE_HINT}") from None
            self._rebuild(exc, map_size)
        if self._salvage:
            self._forget_clean_stop()

    def _rebuild(self, damage: DamagedStore, map_size: int) -> None:
        """Under salvage: set the data file aside, and copy what LMDB could read into a new one."""
        records = readable_records(self.path, DATABASES)
        aside = self._set_aside(rename=True)
        self._open_environment(True, map_size)
        dbs = [self._meta, *(self._dbs[keyspace] for keyspace in KEYSPACES)]
        with self.env.begin(write=True) as txn:
            for (index, key), value in records.items():
                if index != 0 or key not in (b"format", CLEAN_STOP_KEY):
                    txn.put(key, value, db=dbs[index])
        copied = sum(index != 0 for index, _ in records)
        log.error(
            "salvage: %s; set aside as %s, %d values it could read copied, the rest from the log",
            damage,
            aside,
            copied,
        )
        self.salvaged = {"set_aside": aside.name, "reason": str(damage), "values_copied": copied}
        self._remove_damaged_values(keep_copy=False)

    def _open_environment(self, fresh: bool, map_size: int) -> None:
        data_file = self.path / DATA_FILE
        if not fresh:
            check_data_file(data_file)  # before LMDB maps pages the file may not have
        try:
            self.env = open_environment(self.path, map_size)
            self._open_databases(fresh)
            self._max_key = self.env.max_key_size()
        except self._lmdb.Error as exc:
            self._close_environment()
            raise _lmdb_failure(data_file, exc) from None
        except BaseException:
            self._close_environment()
            raise

    def _close_environment(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def _remove_damaged_values(self, *, keep_copy: bool = True) -> None:
        """Under salvage: remove every value that cannot be loaded, after copying the file aside."""
        damaged: list[tuple[str, bytes, str]] = []
        try:
            with self.env.begin() as txn:
                for keyspace, db in self._dbs.items():
                    for db_key, data in txn.cursor(db=db).iternext():
                        try:
                            decode_state(keyspace, data, trusted=True)
                        except StorageError as exc:
                            damaged.append((keyspace, db_key, str(exc)))
        except self._lmdb.Error as exc:
            raise _lmdb_failure(self.path / DATA_FILE, exc) from None
        if not damaged:
            log.warning("salvage: every value in %s passes its checksum", self.path / DATA_FILE)
            return
        aside = self._set_aside(rename=False) if keep_copy else None
        with self.env.begin(write=True) as txn:
            for keyspace, db_key, _ in damaged:
                txn.delete(db_key, db=self._dbs[keyspace])
        shown = ", ".join(f"{keyspace} {db_key[:60]!r}" for keyspace, db_key, _ in damaged[:10])
        log.error(
            "salvage: removed %d damaged values from %s (the first: %s; %s)%s",
            len(damaged),
            self.path / DATA_FILE,
            damaged[0][2],
            shown,
            f", a copy kept as {aside}" if aside else "",
        )
        self.salvaged = {**self.salvaged, "values_removed": len(damaged)}
        if aside:
            self.salvaged["set_aside"] = aside.name

    def _set_aside(self, *, rename: bool) -> Path:
        """Move (or copy) the data file to a name `check_dir` accepts, and return that path."""
        source = self.path / DATA_FILE
        stamp = int(time.time())
        while (aside := self.path / set_aside_name(stamp)).exists():
            stamp += 1
        try:
            if rename:
                source.rename(aside)
            else:
                shutil.copyfile(source, aside)
        except OSError as exc:
            raise StorageError(f"cannot set {source} aside: {exc.strerror or exc}") from None
        return aside

    def _forget_clean_stop(self) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(CLEAN_STOP_KEY, db=self._meta)
        log.warning("salvage: %s starts as after an unclean stop", self.path)

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

    def _checkpointed(self) -> int:
        """The newest segment LMDB holds, as the last checkpoint recorded it."""
        with self.env.begin() as txn:
            marker = bytes(txn.get(CHECKPOINT_KEY, b"0", db=self._meta))
        if not marker.isdigit():
            raise StorageError(f"data dir {self.path} has a damaged checkpoint marker {marker!r}")
        return int(marker)

    def _read_log(self) -> None:
        """Check and read the segments no checkpoint covers (`replica.durable.log_recovery`).

        A torn tail is cut; damage is a StorageError, or cut out when salvaging.
        """
        done = self._checkpointed()
        required = self.get_meta(MANIFEST_META) is not None  # it had one: it must have it
        started = time.perf_counter()
        try:
            recovered = recover_log(self.path, done, required=required, salvage=self._salvage)
        except CorruptLog as exc:
            raise StorageError(f"data dir {self.path}: {exc}") from None
        except OSError as exc:
            raise StorageError(
                f"cannot read the log in data dir {self.path}: {exc.strerror or exc}"
            ) from None
        if not required:
            self.set_meta(MANIFEST_META, b"1")
        if recovered.salvaged:
            self.salvaged = {**self.salvaged, "log_damage_cut": True}
        self._logged = recovered.payloads
        records = sum(map(len, self._logged))
        if records:
            elapsed_ms = (time.perf_counter() - started) * 1000
            log.info(
                "read %d log records of %d segments in %.0f ms",
                records,
                len(self._logged),
                elapsed_ms,
            )

    # -- the interface -----------------------------------------------------------------------

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        """LMDB's records the log has not replaced, then the latest logged state of each key."""
        if self._link is not None:
            self.checkpoint()  # the writer's log, into LMDB: then LMDB alone is everything
        logged = KeyChanges()
        max_key = self._max_key
        for payloads in self._logged:
            for payload in payloads:
                for keyspace, key, stored in log_entries(payload):
                    logged.add(keyspace, db_key_of(key.encode(), max_key), key, stored)
        with self.env.begin() as txn:
            for keyspace, db in self._dbs.items():
                shadowed = logged.shadowed(keyspace)
                yield from _load_database(self.path / DATA_FILE, txn, keyspace, db, shadowed)
        for keyspace in KEYSPACES:
            for key, stored in logged.puts[keyspace].values():
                yield keyspace, key, state_of(keyspace, key, stored)

    def begin_writes(self) -> None:
        """Start the log writer, which from now on owns the log; StorageError if it cannot."""
        if self._closed:
            raise StorageError(f"the store of {self.path} is closed")
        if self._link is None:
            link = LogLink(self.path, self._lock_fd, self._settings, self._checkpointed)
            try:
                link.start()
            except LogFailed as exc:
                raise StorageError(f"data dir {self.path}: {exc}") from None
            self._link = link
            self._logged = []  # loaded, or never to be: the writer checkpoints them

    def submit(self, record: bytes, done: Done) -> None:
        self.begin_writes()
        assert self._link is not None
        self._link.submit(record, done)

    def store_batch(self, entries: list[Entry]) -> None:
        """Append the entries to the log as one record: durable on return, in LMDB later."""
        self.begin_writes()
        assert self._link is not None
        self._link.request(APPEND, encode_batch(entries))

    def checkpoint(self) -> None:
        """Have every commit so far written into LMDB now; CheckpointFailed if it is not."""
        self.begin_writes()
        assert self._link is not None
        try:
            self._link.request(CHECKPOINT)
        except LogFailed as exc:
            raise CheckpointFailed(str(exc)) from None

    def get_meta(self, name: str) -> bytes | None:
        with self.env.begin() as txn:
            value = txn.get(name.encode(), db=self._meta)
        return None if value is None else bytes(value)

    def set_meta(self, name: str, value: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(name.encode(), value, db=self._meta)

    def status(self) -> dict[str, Any]:
        """The log writer's restarts, its checkpoints since the store opened, what a salvage did.

        A writer that dies is replaced at the next commit; checkpoints count
        those that wrote something and those that failed, and the last says
        how many keys it wrote in how many ms, or why it failed.
        """
        link = self._link
        return {
            "log_writer_restarts": link.restarts if link else 0,
            "checkpoints": link.checkpoints if link else 0,
            "checkpoint_failures": link.checkpoint_failures if link else 0,
            "last_checkpoint": link.last_checkpoint if link else None,
            **({"salvaged": self.salvaged} if self.salvaged else {}),
        }

    def count(self) -> int:
        """The keys in LMDB, as of the last checkpoint (closing checkpoints everything)."""
        with self.env.begin() as txn:
            return sum(txn.stat(db)["entries"] for db in self._dbs.values())

    def begin_incarnation(self, node_id: str) -> str:
        """The actor this start of `node_id` writes as (see the module docstring).

        The same as last time after a clean stop, else a new one, logged at
        WARNING.  The clean marker is cleared in the same synced transaction.
        """
        with self.env.begin(write=True) as txn:
            stored = txn.get(ACTOR_KEY, db=self._meta)
            previous = None if stored is None else bytes(stored).decode(errors="replace")
            if previous is not None and not previous.startswith(f"{node_id}~"):
                raise StorageError(
                    f"data dir {self.path} belongs to node {previous.split('~')[0]!r}"
                )
            actors = _actor_list(txn.get(ACTORS_KEY, db=self._meta), previous)
            clean = txn.get(CLEAN_STOP_KEY, db=self._meta) == b"1" and not self._salvage
            actor = previous if previous is not None and clean else new_actor(node_id, actors)
            if actor != previous:
                actors.append(actor)
                if previous is not None:
                    log.warning("unclean stop: continuing as actor %s (was %s)", actor, previous)
            txn.put(ACTOR_KEY, actor.encode(), db=self._meta)
            txn.put(ACTORS_KEY, " ".join(actors).encode(), db=self._meta)
            txn.put(CLEAN_STOP_KEY, b"0", db=self._meta)
        self._incarnation = True
        return actor

    def close(self, *, clean: bool = True) -> None:
        """Checkpoint everything, so the next start replays nothing; then let the data dir go.

        A checkpoint that fails here loses nothing: the log keeps every
        commit, and the next start replays it, under a new actor: only a
        close whose checkpoint succeeded marks the stop clean, and only when
        `clean` says the node made every write it took durable (in "async"
        mode a write that never was may have reached peers with its dot).
        """
        if self._closed:
            return
        try:
            if self._link is None and any(self._logged):
                self.begin_writes()  # its writer checkpoints the log at close
            if self._link is not None:
                self._link.close()
            if self._incarnation and clean:
                with self.env.begin(write=True) as txn:
                    txn.put(CLEAN_STOP_KEY, b"1", db=self._meta)
        except (LogFailed, StorageError, self._lmdb.Error) as exc:
            log.error("checkpoint at close failed (the log keeps every commit): %s", exc)
        finally:
            self._closed = True
            self._release()

    def _release(self) -> None:
        if self.env is not None:
            self.env.close()
        os.close(self._lock_fd)


def _load_database(
    data_file: Path, txn: Any, keyspace: str, db: Any, shadowed: set[bytes]
) -> Iterator[tuple[str, str, Any]]:
    """Every record of `db` but the `shadowed` keys; StorageError naming the file and key."""
    import lmdb

    cursor = txn.cursor(db=db)
    try:
        if not shadowed:
            for data in cursor.iternext(keys=False):
                key, state = decode_state(keyspace, data, trusted=True)
                yield keyspace, key, state
            return
        for db_key, data in cursor.iternext():
            if db_key not in shadowed:
                key, state = decode_state(keyspace, data, trusted=True)
                yield keyspace, key, state
    except lmdb.Error as exc:
        raise _lmdb_failure(data_file, exc) from None
    except DamagedStore as exc:
        where = f"{data_file}, {keyspace} key {_key_at(cursor)}"
        raise DamagedStore(f"{where}: {exc} {SALVAGE_HINT}") from None
    except StorageError as exc:
        raise StorageError(f"{data_file}, {keyspace} key {_key_at(cursor)}: {exc}") from None
    except Exception as exc:  # a value that passed its checks yet does not load
        raise StorageError(
            f"{data_file}, {keyspace} key {_key_at(cursor)} does not load: "
            f"{type(exc).__name__}: {exc}"
        ) from None


def _key_at(cursor: Any) -> str:
    try:
        return repr(bytes(cursor.key())[:60])
    except Exception:
        return "(unknown)"


def _lmdb_failure(data_file: Path, exc: Exception) -> StorageError:
    """A StorageError for an lmdb error: DamagedStore when it says the file is damaged."""
    message = str(exc).replace("\n", " ")
    if type(exc).__name__ in LMDB_DAMAGE:
        return DamagedStore(f"{data_file} is damaged: {message}")
    return StorageError(f"cannot use {data_file}: {message}")


# -- opening -------------------------------------------------------------------------------


def open_store(
    data_dir: str | Path | None, node_id: str, *, salvage: bool = False
) -> tuple[Store, str]:
    """The node's store and the actor it writes as (`LmdbStore.begin_incarnation`).

    Without a data dir the store is in memory and the actor is the node id itself.
    `salvage` opens a damaged data dir with what can be read of it, as a new incarnation.
    """
    if data_dir is None:
        return MemoryStore(), node_id
    store = LmdbStore(data_dir, salvage=salvage)
    try:
        return store, store.begin_incarnation(node_id)
    except BaseException:
        store.close()
        raise


def _actor_list(stored: Any, actor: str | None) -> list[str]:
    """Every actor the data dir has had, as stored (before lists were: its one actor)."""
    actors = bytes(stored).decode(errors="replace").split() if stored is not None else []
    if actor is not None and actor not in actors:
        actors.append(actor)
    return actors
