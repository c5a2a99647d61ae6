"""An append-only log of checksummed records: where a durable node's commits become durable.

A synced LMDB commit writes the B-tree pages it touched all over the file and
then the meta page, so it costs milliseconds however small the batch.  An
append of the same batch to one file costs a fraction of that
(docs/benchmarks.md), so a commit is durable once it is in the log; LMDB is
written later, from the log's closed segments, in checkpoints.

The log is a numbered sequence of segment files `log.000001`, `log.000002`, ...
in the data dir.  Only the newest is appended to; a checkpoint closes it,
opens the next, and deletes closed segments once their records are in LMDB.
Each record is framed as

    payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload

and the payload is opaque here (a commit's record, `replica.durable.records`).
A batch is written with one `pwrite` to a file opened with O_DSYNC, which
returns once the batch is on disk as `fdatasync` would, in one call instead
of two.  Only the log writer process appends (`replica.durable.log_writer`).

A new segment is zero-filled before its first append: overwriting blocks
that are already allocated and written syncs only data, not the file's block
map, which about halves the cost of a sync (docs/benchmarks.md).
`fallocate` alone does not help: its blocks are marked unwritten, and the
first write to each still changes metadata.  Zero-filled
space reads as a zero length, which no record has, so it marks the end.

Reading a segment back (`scan_segment`) trusts a prefix of whole records.
What follows the last whole record is a torn tail, the part of a batch that
was being written when the process or the machine stopped, and so was never
acknowledged, when no valid record follows it anywhere in the segment and the
record it starts could not have been written whole: it runs past the last byte
written, or a sector inside it (`SECTOR`, the unit a disk writes whole) is
still all zeros.  A torn tail is cut off.  Anything else is damage to data
that was acknowledged and raises `CorruptLog`: a record whose every sector was
written but whose checksum fails, or a bad record with valid ones after it.
A store must not start without it, unless told to salvage what it can.

Which segments exist, and how long each is, is recorded apart from the files
(`replica.durable.log_manifest`), so that a lost or cut segment is noticed too.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from replica.fd_io import write_all

HEADER = struct.Struct("<II")
"""Payload length and the CRC-32 of the payload."""
SEGMENT_NAME = re.compile(r"log\.(\d{6,})")
FILL_CHUNK = 1 << 20
SECTOR = 512
"""What a disk writes whole: a write a crash cut short leaves whole sectors of zeros behind."""
_ZERO_SECTOR = bytes(SECTOR)
_NONZERO = re.compile(rb"[^\x00]")

log = logging.getLogger("replica.durable.commit_log")


class CorruptLog(Exception):
    """A segment holds a damaged record before records that are whole; `str()` is one line."""


class SegmentBroken(Exception):
    """An earlier append to this segment failed, so its tail is unknown: append to the next one."""


def segment_name(seq: int) -> str:
    return f"log.{seq:06d}"


def segment_seq(name: str) -> int | None:
    """The sequence number of a segment file's name; None for any other name."""
    match = SEGMENT_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def list_segments(directory: Path) -> list[int]:
    """The sequence numbers of the segments in `directory`, oldest first."""
    seqs = (segment_seq(name) for name in os.listdir(directory))
    return sorted(seq for seq in seqs if seq is not None)


def frame(payloads: Iterable[bytes]) -> bytes:
    """Records as written: each payload behind its length and checksum."""
    pack, crc32 = HEADER.pack, zlib.crc32
    parts: list[bytes] = []
    add = parts.append
    for payload in payloads:
        if not payload:
            raise ValueError("an empty payload would read as the end of the log")
        add(pack(len(payload), crc32(payload)))
        add(payload)
    return b"".join(parts)


# -- writing -------------------------------------------------------------------------------


class Segment:
    """The segment being appended to; one thread appends at a time."""

    def __init__(self, path: Path, seq: int, fd: int) -> None:
        self.path = path
        self.seq = seq
        self.size = 0  # bytes of records written
        self.broken = False
        self._fd = fd

    @classmethod
    def create(
        cls, directory: Path, seq: int, preallocate: int = 0, *, paced: bool = False
    ) -> Segment:
        """A new, empty segment, `preallocate` bytes zero-filled; its name is durable on return.

        `paced` zero-fills a megabyte at a time, each synced and followed by a
        pause as long as it took, for a segment made while another one takes
        synced appends: 32 MB of zeros synced at once held those appends up
        for tens of milliseconds.
        """
        path = directory / segment_name(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _zero_fill(fd, preallocate, paced)
            os.fdatasync(fd)
            sync_directory(directory)
            appends = os.open(path, os.O_WRONLY | os.O_DSYNC)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        return cls(path, seq, appends)

    def append(self, data: bytes) -> None:
        """Write framed records after the last ones; on return they are on disk.

        The file is open with O_DSYNC, so the one `pwrite` is also the sync
        (as `fdatasync` would be): one system call per batch, not two.

        After a failure the segment's tail is unknown (part of the batch may be
        there), so it takes no more appends: the next batch goes to a new
        segment, and this one's unfinished batch reads back as a torn tail.
        """
        if self.broken:
            raise SegmentBroken(f"an earlier append to {self.path.name} failed")
        try:
            written = 0
            with memoryview(data) as view:
                while written < len(data):
                    written += os.pwrite(self._fd, view[written:], self.size + written)
        except BaseException:
            self.broken = True
            raise
        self.size += len(data)

    def close(self) -> None:
        os.close(self._fd)


def _zero_fill(fd: int, size: int, paced: bool) -> None:
    chunk = bytes(min(FILL_CHUNK, size))
    left = size
    while left > 0:
        started = time.monotonic()
        left -= os.write(fd, chunk[: min(left, len(chunk))])
        if paced:
            os.fdatasync(fd)
            time.sleep(time.monotonic() - started)


def sync_directory(directory: Path) -> None:
    """Make the creation or removal of files in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes, tmp: Path) -> None:
    """Make `data` the content of `path` all at once, durably: written to `tmp`, then renamed."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    sync_directory(path.parent)


def remove_segments(directory: Path, seqs: Iterable[int]) -> None:
    for seq in seqs:
        (directory / segment_name(seq)).unlink(missing_ok=True)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentScan:
    """What a segment's bytes hold: its records, and what follows them."""

    payloads: list[bytes]
    end: int  # just past the last whole record of the prefix that was read whole
    torn: int = 0  # bytes of a torn tail at `end`, to be cut
    skipped: list[tuple[int, int]] = field(default_factory=list)  # salvaged: (offset, bytes)


def read_segment(path: Path, *, cut_tail: bool = True) -> list[bytes]:
    """The payloads of a segment in order; a torn tail is cut off the file when `cut_tail`.

    Raises `CorruptLog` on damage (see `scan_segment`).  The checkpointer
    reads sealed segments with `cut_tail=False`: the log writer owns the files.
    """
    scan = scan_segment(path.read_bytes(), path.name)
    if scan.torn and cut_tail:
        log.warning(
            "log segment %s: cut a torn tail of %d bytes at byte %d", path.name, scan.torn, scan.end
        )
        truncate_segment(path, scan.end)
    return scan.payloads


def scan_segment(data: bytes, name: str, *, salvage: bool = False) -> SegmentScan:
    """The records of segment `name`'s bytes, telling a torn tail from damage.

    Damage raises `CorruptLog`, one line naming the segment and the byte;
    with `salvage` it is skipped instead (each skip in `skipped`), and the
    records after it are kept.
    """
    payloads, end = parse(data)
    skipped: list[tuple[int, int]] = []
    while True:
        written = written_end(data, end)
        if written == end:
            return SegmentScan(payloads, end, 0, skipped)  # the end, or zeros never written
        after = next_valid_record(data, end + 1, written)
        if after is None and _torn(data, end, written):
            return SegmentScan(payloads, end, written - end, skipped)
        if not salvage:
            raise CorruptLog(_damage(name, data, end, after))
        skipped.append((end, (written if after is None else after) - end))
        if after is None:
            return SegmentScan(payloads, end, 0, skipped)
        more, end = parse(data, after)
        payloads += more


def _torn(data: bytes, start: int, written: int) -> bool:
    """Whether the record at `start` can be a write cut short rather than damage."""
    if start + HEADER.size > written:
        return True
    length = HEADER.unpack_from(data, start)[0]
    stop = start + HEADER.size + length
    if length == 0 or stop > written:
        return True
    first = -(-start // SECTOR) * SECTOR
    return any(
        data[pos : pos + SECTOR] == _ZERO_SECTOR for pos in range(first, stop - SECTOR + 1, SECTOR)
    )


def _damage(name: str, data: bytes, start: int, after: int | None) -> str:
    if after is not None:
        return (
            f"log segment {name} has a damaged record at byte {start}"
            f" and a valid one at byte {after} after it"
        )
    length = HEADER.unpack_from(data, start)[0]
    return (
        f"log segment {name} has a damaged last record at byte {start}: all"
        f" {HEADER.size + length} bytes of it were written but its checksum fails"
    )


def parse(data: bytes, start: int = 0) -> tuple[list[bytes], int]:
    """The whole, valid records from `start` on in `data`, and the offset where they end."""
    unpack, crc32 = HEADER.unpack_from, zlib.crc32
    payloads: list[bytes] = []
    pos, size, head = start, len(data), HEADER.size
    while pos + head <= size:
        length, crc = unpack(data, pos)
        stop = pos + head + length
        if length == 0 or stop > size:
            break
        payload = data[pos + head : stop]
        if crc32(payload) != crc:
            break
        payloads.append(payload)
        pos = stop
    return payloads, pos


def written_end(data: bytes, start: int) -> int:
    """Just past the last byte after `start` that is not zero; `start` when there is none.

    Searched from the end a chunk at a time: the zero-filled rest of a
    preallocated segment is most of it, and goes by at memory speed.
    """
    stop = len(data)
    while stop > start:
        begin = max(start, stop - FILL_CHUNK)
        kept = len(data[begin:stop].rstrip(b"\x00"))
        if kept:
            return begin + kept
        stop = begin
    return start


def next_valid_record(data: bytes, start: int, stop: int | None = None) -> int | None:
    """The offset of the first valid record starting in `data[start:stop]`, trying every offset.

    Only a crash's leftovers or damage are searched, so this runs at most once
    per segment on the way up.  Zeros are skipped at once: a record's length
    is not zero, so one of its first four bytes is not either.
    """
    stop = len(data) if stop is None else stop
    pos, size = start, len(data)
    with memoryview(data) as view:
        while pos < stop and pos + HEADER.size < size:
            length, crc = HEADER.unpack_from(data, pos)
            if length == 0:
                found = _NONZERO.search(data, pos, stop)
                if found is None:
                    return None
                pos = max(pos + 1, found.start() - 3)
                continue
            end = pos + HEADER.size + length
            if end <= size and zlib.crc32(view[pos + HEADER.size : end]) == crc:
                return pos
            pos += 1
    return None


def truncate_segment(path: Path, size: int) -> None:
    """Cut a segment file to `size` bytes, durably."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- room on the disk ------------------------------------------------------------------------


def free_bytes(directory: Path) -> int:
    """The bytes an unprivileged process may still write on `directory`'s filesystem."""
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def fitting_preallocation(wanted: int, free: int) -> int:
    """Zeros for a new segment that leave the disk room: at most a quarter of what is free.

    Whole chunks, so none once fewer than four are free: a small disk gets
    appends that also write the block map, never a node that cannot start.
    """
    return max(0, min(wanted, free // 4 // FILL_CHUNK * FILL_CHUNK))
