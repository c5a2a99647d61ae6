"""What makes a directory a node's data dir, and the lock that keeps it one node's.

A data dir holds LMDB's two files, the commit log's segments and a lock
file, and any damaged data files a salvaged start set aside
(`data.mdb.damaged-<unix time>`), nothing else: a directory holding anything
more is not ours, and the node refuses it rather than start empty beside
someone's data.

Two processes appending to one log would each overwrite the other's records, so
a store holds an exclusive lock on the dir while it has it open; the lock
file holds the holder's pid.  The log writer inherits the lock and keeps it
until it exits, so a node restarted right after a kill -9 waits the moment
its previous writer takes to go, and never reads a segment that writer is
still appending to.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from replica.durable.commit_log import segment_seq
from replica.durable.errors import StorageError
from replica.durable.log_manifest import MANIFEST, MANIFEST_TMP

LMDB_FILES = {"data.mdb", "lock.mdb"}
LOCK_FILE = "replica.lock"
SET_ASIDE_PREFIX = "data.mdb.damaged-"
LOCK_WAIT_S = 10.0  # for the log writer of a holder that is gone


def check_dir(path: Path) -> bool:
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
    ours = LMDB_FILES | {LOCK_FILE, MANIFEST, MANIFEST_TMP}
    if {name for name in entries - ours if not is_set_aside(name)}:
        raise StorageError(f"data dir {path} holds other files and no replica store")
    return True


def set_aside_name(stamp: int) -> str:
    """The name a damaged data file is kept under, `stamp` the unix time it was set aside."""
    return f"{SET_ASIDE_PREFIX}{stamp}"


def is_set_aside(name: str) -> bool:
    stamp = name.removeprefix(SET_ASIDE_PREFIX)
    return stamp != name and stamp.isdigit()


def lock_dir(path: Path, wait_s: float) -> int:
    """An exclusive lock on the data dir, held as long as the returned descriptor is open.

    A lock held while the pid in the file is gone belongs to the log writer
    of a node that was killed, which exits as soon as it sees its node go:
    that is waited for, up to `wait_s`.
    """
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot use data dir {path}: {exc.strerror or exc}") from None
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if _holder_alive(fd) or time.monotonic() >= deadline:
                os.close(fd)
                raise StorageError(f"data dir {path} is in use by another process") from None
            time.sleep(0.01)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock data dir {path}: {exc.strerror or exc}") from None
    with contextlib.suppress(OSError):  # the pid is a courtesy to the next opener
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lock_holder(path: Path) -> int | None:
    """The pid holding `path`'s lock (0 when it wrote none), or None when nothing holds it.

    For a supervisor that starts a node over a data dir a stopping node may
    still hold: it can wait instead of having the new node refuse the dir.
    """
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDWR)
    except OSError:
        return None  # no lock file yet: nothing holds it
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return int(os.pread(fd, 32, 0).decode().strip())
            except (OSError, ValueError):
                return 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_alive(fd: int) -> bool:
    """Whether the pid the lock's holder wrote is a live process (unknown counts as alive)."""
    try:
        pid = int(os.pread(fd, 32, 0).decode().strip())
    except (OSError, ValueError):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")  # a zombie holds no lock: its files are closed
