"""A data dir's durable store: LMDB behind a commit log written by the log writer process.

A durable node acknowledges a write only once its commit is on disk, so the
cost of that bounds the node's write rate.  A synced LMDB transaction
writes every B-tree page it touched, scattered over the file, then the meta
page, so a commit is made durable by appending it to a commit log
(`replica.durable.commit_log`), and LMDB is written behind the log by
checkpoints.  Both are the work of the log writer, a process of its own
(`replica.durable.log_writer`); the store talks to it through a `LogLink`.
The node holds no copy of what it logged.

LMDB rather than the log alone, because it bounds the log and keeps loading
a scan of one B-tree, however long the node has run.  Recovery loads LMDB
and replays the segments that remain, in order (every entry is a key's
whole state, so the latest one wins); the transaction of a checkpoint
records the newest segment it covers, so segments that a crash left behind
after their checkpoint are deleted, not replayed.  A clean close
checkpoints everything, so the next start replays nothing.

A data dir is locked while a store has it open (`replica.durable.data_dir`):
two processes appending to one log would each overwrite the other's records.
Only the current format (`FORMAT_MARKER`) is read: a data dir of another is
refused, never misread.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replica.durable.commit_log import CorruptLog
from replica.durable.data_dir import LOCK_WAIT_S, check_dir, lock_dir
from replica.durable.errors import DamagedStore, StorageError
from replica.durable.incarnation import (
    CLEAN_STOP_KEY,
    Incarnation,
    begin_incarnation,
    forget_clean_stop,
    mark_clean,
)
from replica.durable.lmdb_checkpoint import CHECKPOINT_KEY, open_environment
from replica.durable.lmdb_file import (
    check_data_file,
    check_in_child,
    lmdb_failure,
    readable_records,
)
from replica.durable.log_link import Done, LogFailed, LogLink
from replica.durable.log_recovery import recover_log
from replica.durable.pipe_protocol import LogSettings
from replica.durable.records import KEYSPACES, db_key_of, decode_state, log_entries, state_of
from replica.durable.salvage import DATA_FILE, remove_damaged_values, set_aside

log = logging.getLogger("replica.durable.lmdb_store")

FORMAT_MARKER = b"replica-store/4"
"""What meta's `format` holds: LMDB values with a CRC-32, log records of whole commits."""
DATABASES = [b"meta", *(keyspace.encode() for keyspace in KEYSPACES)]
"""LMDB's named databases: metadata, then one per keyspace in `KEYSPACES` order."""
SALVAGE_HINT = "(replica serve --salvage starts from what is readable)"
MANIFEST_META = b"log_manifest"
"""Set in meta once the data dir has a log manifest: from then on a missing one is damage."""
DEFAULT_MAP_SIZE = 64 << 30  # address space only: the file grows as data does
SEGMENT_BYTES = 32 << 20
CHECKPOINT_INTERVAL_S = 5.0


class LatestLogged:
    """The latest log entry of each key, keyed as LMDB keys them: built only while loading.

    A state replaces an earlier state or removal of its key, and a removal an
    earlier state: keeping only the latest is what lets recovery decode each
    state once.
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


class LmdbStore:
    """A data dir of one LMDB environment and a commit log; see the module docstring.

    LMDB has a named database per keyspace and one for metadata.  The log
    writer starts at `begin_writes`, after `load_all`, and owns the log from then on.
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
        """Open LMDB, refusing a damaged data file (DamagedStore), or salvaging it."""
        try:
            if not fresh:
                check_data_file(self.path / DATA_FILE)
                check_in_child(self.path, DATABASES)  # a page that crashes LMDB crashes the child
            self._open_environment(fresh, map_size)
            if self._salvage and not fresh:
                self._note_salvage(remove_damaged_values(self.env, self._dbs, self.path))
        except DamagedStore as exc:
            self._close_environment()
            if not self._salvage:
                raise type(exc)(f"{exc} {SALVAGE_HINT}") from None
            self._rebuild(exc, map_size)
        if self._salvage:
            with self.env.begin(write=True) as txn:
                forget_clean_stop(txn, self._meta)
            log.warning("salvage: %s starts as after an unclean stop", self.path)

    def _rebuild(self, damage: DamagedStore, map_size: int) -> None:
        """Under salvage: set the data file aside, and copy what LMDB could read into a new one."""
        records = readable_records(self.path, DATABASES)
        aside = set_aside(self.path, rename=True)
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
        removed = remove_damaged_values(self.env, self._dbs, self.path, keep_copy=False)
        self._note_salvage(removed)

    def _note_salvage(self, done: dict[str, Any]) -> None:
        if done:
            self.salvaged = {**self.salvaged, **done}

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
            raise lmdb_failure(data_file, exc) from None
        except BaseException:
            self._close_environment()
            raise

    def _close_environment(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

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
                    f"data dir {self.path} holds format {bytes(marker)!r}, "
                    f"this replica reads only {FORMAT_MARKER!r}"
                )
            self._dbs = {ks: self.env.open_db(ks.encode(), txn=txn) for ks in KEYSPACES}
            if marker is None:
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
        with self.env.begin() as txn:
            required = txn.get(MANIFEST_META, db=self._meta) is not None
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
            with self.env.begin(write=True) as txn:
                txn.put(MANIFEST_META, b"1", db=self._meta)
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

    def begin_incarnation(self, node_id: str) -> Incarnation:
        """The actor this start of `node_id` writes as, and its dot floor (`incarnation`)."""
        with self.env.begin(write=True) as txn:
            started = begin_incarnation(txn, self._meta, self.path, node_id, salvage=self._salvage)
        self._incarnation = True
        return started

    # -- the store the node sees -------------------------------------------------------------

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        """LMDB's records the log has not replaced, then the latest logged state of each key."""
        if self._link is not None:
            raise RuntimeError("load_all comes before begin_writes")
        logged = LatestLogged()
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

    def close(self, *, clean: bool = True, dot_floor: int = 0) -> None:
        """Checkpoint everything, so the next start replays nothing; then let the data dir go.

        A checkpoint that fails here loses nothing: the log keeps every
        commit, and the next start replays it, under a new actor: only a
        close whose checkpoint succeeded marks the stop clean, and only when
        `clean` says the node made every write it took durable (in "async"
        mode a write that never was may have reached peers with its dot).
        A clean stop keeps `dot_floor`, the actor's, for the next start.
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
                    mark_clean(txn, self._meta, dot_floor)
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
                key, state = decode_state(keyspace, data)
                yield keyspace, key, state
            return
        for db_key, data in cursor.iternext():
            if db_key not in shadowed:
                key, state = decode_state(keyspace, data)
                yield keyspace, key, state
    except lmdb.Error as exc:
        raise lmdb_failure(data_file, exc) from None
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
