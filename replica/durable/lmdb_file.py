"""Whether an LMDB data file is whole, read with plain reads before LMDB maps it.

LMDB maps `data.mdb` and trusts it.  An empty file is taken for a new
environment, so a store truncated to nothing would start empty; a page past
the end of a file cut short is touched through the map and kills the
process with SIGBUS.  So the node reads the two meta pages itself first and
refuses a file that cannot hold the pages the newest one uses.

The layout is LMDB 0.9's (`mdb.c`, little-endian, 64-bit): a page starts
with a 16-byte header (page number, pad, flags, lower and upper bounds),
and a meta page's `MDB_meta` follows it: magic 0xBEEFC0DE, data version 1,
map address and size, two `MDB_db` (free pages, then the main database; the
first one's `md_pad` is the page size), `mm_last_pg`, `mm_txnid`.  LMDB
uses the meta with the larger transaction id.

The file may legitimately end before `mm_last_pg`: pages allocated and
freed by one transaction are never written (LMDB's own comment on
`mm_last_pg`).  Only then is the free-page database walked, with the same
plain reads, to find the last page in use.

Damage inside the B-tree is LMDB's to find, and it reports most of it as
an error; but a damaged page can also fail one of its assertions (abort) or
make it read past the map.  Reading every record once in a process of its
own (`check_in_child`) tells that apart without risking the node: every
start does it before LMDB is opened in the node, and a salvage then copies
what children reading from either end could read (`readable_records`).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from replica.durable.errors import DamagedStore, StorageError
from replica.fd_io import write_all

PAGE_HEADER = 16
MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 0x10000
P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
F_BIGDATA = 0x01
NO_PAGE = (1 << 64) - 1
META = struct.Struct("<QHH4xII16xI36xQ48xQQ")
"""Of a meta page: pgno, pad, flags, magic, version, page size, free db root, last page, txnid."""
META_BYTES = META.size
NODE = struct.Struct("<HHHH")
"""A B-tree node's header: lo, hi, flags, key size (lo | hi << 16 | flags << 32 in a branch)."""


class _Meta:
    __slots__ = ("free_root", "last_page", "page_size", "txnid")

    def __init__(self, page_size: int, free_root: int, last_page: int, txnid: int) -> None:
        self.page_size = page_size
        self.free_root = free_root
        self.last_page = last_page
        self.txnid = txnid


def check_data_file(path: Path) -> None:
    """Raise DamagedStore unless `path` holds two valid meta pages and every page the newer uses.

    Reads two pages, and the free-page database only when the file ends
    before the newest meta's last page.
    """
    try:
        with path.open("rb") as opened:
            file = opened.fileno()
            size = os.fstat(file).st_size
            if size == 0:
                raise DamagedStore(f"{path} is empty (0 bytes): the store in it is gone")
            first = _meta(path, 0, _read(file, 0, META_BYTES, size, path))
            second = _meta(path, 1, _read(file, first.page_size, META_BYTES, size, path))
            if second.page_size != first.page_size:
                raise DamagedStore(f"{path}: its two meta pages disagree on the page size")
            newest = first if first.txnid >= second.txnid else second
            needed = (newest.last_page + 1) * newest.page_size
            if size < needed:
                needed = (_last_page_in_use(file, newest, size, path) + 1) * newest.page_size
            if size < needed:
                raise DamagedStore(
                    f"{path} is cut short: {size} bytes, but its pages in use end at {needed} bytes"
                )
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror or exc}") from None
    except struct.error:
        raise DamagedStore(f"{path}: its free-page database is damaged") from None


def _read(file: int, offset: int, length: int, size: int, path: Path) -> bytes:
    if offset + length > size:
        raise DamagedStore(
            f"{path} is cut short: {size} bytes, but it needs at least {offset + length}"
        )
    data = os.pread(file, length, offset)
    if len(data) != length:
        raise DamagedStore(f"{path} is cut short: {size} bytes")
    return data


def _meta(path: Path, number: int, page: bytes) -> _Meta:
    _, _, flags, magic, version, page_size, free_root, last_page, txnid = META.unpack_from(page)
    if not flags & P_META or magic != MAGIC:
        raise DamagedStore(f"{path}: meta page {number} is damaged (no LMDB meta page there)")
    if version != DATA_VERSION:
        raise DamagedStore(f"{path}: meta page {number} has LMDB data version {version}, not 1")
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise DamagedStore(f"{path}: meta page {number} has a damaged page size {page_size}")
    if last_page < 1:
        raise DamagedStore(f"{path}: meta page {number} has a damaged last page {last_page}")
    return _Meta(page_size, free_root, last_page, txnid)


def _last_page_in_use(file: int, meta: _Meta, size: int, path: Path) -> int:
    """The highest page up to `meta.last_page` that the free-page database does not list."""
    free = _free_pages(file, meta, size, path)
    page = meta.last_page
    while page in free:
        page -= 1
    return page


def _free_pages(file: int, meta: _Meta, size: int, path: Path) -> set[int]:
    """Every page number the free-page database lists (LMDB IDLs: a count, then the pages)."""
    free: set[int] = set()
    if meta.free_root == NO_PAGE:
        return free
    psize, pending, seen = meta.page_size, [meta.free_root], set()
    while pending:
        number = pending.pop()
        if number in seen or number > meta.last_page:
            raise DamagedStore(f"{path}: its free-page database is damaged")
        seen.add(number)
        page = _read(file, number * psize, psize, size, path)
        flags, lower = struct.unpack_from("<HH", page, 10)
        count = (lower - PAGE_HEADER) >> 1
        if lower < PAGE_HEADER or PAGE_HEADER + 2 * count > psize:
            raise DamagedStore(f"{path}: page {number} of its free-page database is damaged")
        for offset in struct.unpack_from(f"<{count}H", page, PAGE_HEADER):
            if offset + NODE.size > psize:
                raise DamagedStore(f"{path}: page {number} of its free-page database is damaged")
            lo, hi, node_flags, key_size = NODE.unpack_from(page, offset)
            if flags & P_BRANCH:
                pending.append(lo | hi << 16 | node_flags << 32)
                continue
            if not flags & P_LEAF:
                raise DamagedStore(f"{path}: page {number} of its free-page database is damaged")
            data_at = offset + NODE.size + key_size
            data_size = lo | hi << 16
            if node_flags & F_BIGDATA:
                (overflow,) = struct.unpack_from("<Q", page, data_at)
                data = _read(file, overflow * psize + PAGE_HEADER, data_size, size, path)
            else:
                data = page[data_at : data_at + data_size]
            free.update(_page_list(data, path))
    return free


def _page_list(data: bytes, path: Path) -> tuple[int, ...]:
    if len(data) < 8:
        raise DamagedStore(f"{path}: a record of its free-page database is damaged")
    (count,) = struct.unpack_from("<Q", data)
    if len(data) < 8 * (count + 1):
        raise DamagedStore(f"{path}: a record of its free-page database is damaged")
    return struct.unpack_from(f"<{count}Q", data, 8)


READ_TIMEOUT_S = 600.0
FRAME = struct.Struct(">BII")
"""A record a reading child writes: database index, key length, value length; then both."""
FLUSH_BYTES = 1 << 16
CHECK, FORWARD, BACKWARD = "check", "forward", "backward"


def check_in_child(directory: Path, names: list[bytes]) -> None:
    """Read every record of the named databases in a child process; DamagedStore if it fails.

    The child dies instead of the node when LMDB crashes on a damaged page.
    """
    _, failure = _read_in_child(directory, names, CHECK)
    if failure is not None:
        raise DamagedStore(f"{directory / 'data.mdb'} is damaged: {failure}")


def readable_records(directory: Path, names: list[bytes]) -> dict[tuple[int, bytes], bytes]:
    """{(index in `names`, key): value} of every record LMDB can read, from either end.

    Each direction reads in a child of its own up to the first damage, so a
    damaged page in the middle costs only the records beyond LMDB's reach.
    """
    records: dict[tuple[int, bytes], bytes] = {}
    for direction in (FORWARD, BACKWARD):
        found, _ = _read_in_child(directory, names, direction)
        for index, key, value in found:
            records[(index, key)] = value
    return records


def _read_in_child(
    directory: Path, names: list[bytes], direction: str
) -> tuple[list[tuple[int, bytes, bytes]], str | None]:
    """The records a child read, and why it stopped early (None: it read everything)."""
    argv = [sys.executable, "-m", "replica.durable.lmdb_file", str(directory), direction]
    argv += [name.hex() for name in names]
    try:
        child = subprocess.run(argv, capture_output=True, timeout=READ_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StorageError(f"cannot read {directory / 'data.mdb'} in a child: {exc}") from None
    records = list(_frames(child.stdout))
    if child.returncode < 0:
        return records, f"LMDB died of {signal.Signals(-child.returncode).name} reading it"
    if child.returncode != 0:
        lines = child.stderr.decode(errors="replace").strip().splitlines()
        return records, lines[-1] if lines else f"the reading child exited {child.returncode}"
    return records, None


def _frames(data: bytes) -> Iterator[tuple[int, bytes, bytes]]:
    at = 0
    while at + FRAME.size <= len(data):
        index, key_size, value_size = FRAME.unpack_from(data, at)
        start = at + FRAME.size
        at = start + key_size + value_size
        if at > len(data):
            return  # cut off where the child died
        yield index, data[start : start + key_size], data[start + key_size : at]


def _read_databases(directory: str, direction: str, names: list[bytes]) -> int:
    """The child: read the named databases in `direction`, writing each record unless checking."""
    import lmdb

    out = bytearray()
    try:
        env = lmdb.open(directory, readonly=True, lock=False, max_dbs=len(names) + 1)
        with env.begin() as txn:
            for _ in txn.cursor().iternext():  # the main database: the names of the others
                pass
            for index, name in enumerate(names):
                try:
                    db = env.open_db(name, txn=txn, create=False)
                except lmdb.NotFoundError:
                    continue
                cursor = txn.cursor(db=db)
                if direction == CHECK:
                    for _ in cursor.iternext(keys=False):  # values too: overflow pages
                        pass
                    continue
                records = cursor.iterprev() if direction == BACKWARD else cursor.iternext()
                for key, value in records:
                    out += FRAME.pack(index, len(key), len(value)) + key + value
                    if len(out) >= FLUSH_BYTES:
                        _write_out(out)
    except lmdb.Error as exc:
        _write_out(out)
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 1
    _write_out(out)
    return 0


def _write_out(out: bytearray) -> None:
    """Out at once, so a child that LMDB crashes later has passed on what it read."""
    write_all(1, out)
    del out[:]


if __name__ == "__main__":
    names = [bytes.fromhex(name) for name in sys.argv[3:]]
    sys.exit(_read_databases(sys.argv[1], sys.argv[2], names))


LMDB_DAMAGE = ("CorruptedError", "PageNotFoundError", "InvalidError", "VersionMismatchError")
"""The lmdb errors that say the data file's bytes are damaged, not that it cannot be used."""


def lmdb_failure(data_file: Path, exc: Exception) -> StorageError:
    """A StorageError for an lmdb error: DamagedStore when it says the file is damaged."""
    message = str(exc).replace("\n", " ")
    if type(exc).__name__ in LMDB_DAMAGE:
        return DamagedStore(f"{data_file} is damaged: {message}")
    return StorageError(f"cannot use {data_file}: {message}")
