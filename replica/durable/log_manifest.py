"""The log's manifest: which segments a data dir holds, so that a lost or cut one is noticed.

The segment files alone cannot show that one is gone or shorter than it was:
a deleted newest segment, or one cut short, reads as a log that ended
earlier, and the commits it held would be lost without a word.  So the log
writer records each segment here before its first append, with the zeros it
was preallocated, and its length once it is sealed (it takes no more
appends).  Recovery (`replica.durable.log_recovery`) checks the files against it.

It is a file of its own, `log-manifest`, replaced whole: written to a
temporary file, synced, renamed over the old one, and the directory synced,
so a crash leaves the old manifest or the new one.  Not LMDB's meta
database: the writer, which updates it, does not open LMDB, and a
transaction there would wait for the checkpointer's write lock, which a paced
checkpoint holds for seconds.  Its content is one log record (length, CRC-32,
JSON), so damage to it is seen as damage to a segment is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from replica.durable.commit_log import CorruptLog, frame, parse, replace_durably

MANIFEST = "log-manifest"
MANIFEST_TMP = "log-manifest.tmp"
VERSION = 1


@dataclass
class SegmentEntry:
    """What the manifest knows of one segment."""

    preallocated: int  # bytes zero-filled when it was made: its file is at least this long
    length: int | None = None  # bytes of records, once sealed; None while it takes appends


class Manifest:
    """The segments of a log by sequence number, oldest first."""

    def __init__(self, segments: dict[int, SegmentEntry] | None = None) -> None:
        self.segments: dict[int, SegmentEntry] = dict(sorted((segments or {}).items()))

    def add(self, seq: int, preallocated: int) -> None:
        self.segments[seq] = SegmentEntry(preallocated)
        self.segments = dict(sorted(self.segments.items()))

    def seal(self, seq: int, length: int) -> None:
        self.segments[seq].length = length

    def drop(self, seqs: Iterable[int]) -> None:
        for seq in list(seqs):
            self.segments.pop(seq, None)

    def sealed_bytes(self) -> int:
        """The records of the sealed segments together."""
        return sum(entry.length or 0 for entry in self.segments.values())

    def encode(self) -> bytes:
        rows = [[seq, e.preallocated, e.length] for seq, e in self.segments.items()]
        return frame([orjson.dumps({"version": VERSION, "segments": rows})])

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """The manifest `data` encodes; CorruptLog, one line, when it is damaged."""
        payloads, end = parse(data)
        if len(payloads) != 1 or end != len(data):
            raise CorruptLog(f"the log manifest {MANIFEST} is damaged: its checksum fails")
        try:
            document = orjson.loads(payloads[0])
            if document["version"] != VERSION:
                raise CorruptLog(f"the log manifest {MANIFEST} has unknown version")
            segments = {}
            for seq, preallocated, length in document["segments"]:
                if not _count(seq) or not _count(preallocated) or not _count(length, True):
                    raise ValueError
                segments[seq] = SegmentEntry(preallocated, length)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise CorruptLog(
                f"the log manifest {MANIFEST} is damaged: not a list of segments"
            ) from None
        return cls(segments)

    def save(self, directory: Path) -> None:
        """Replace the manifest in `directory` with this one, durably."""
        replace_durably(directory / MANIFEST, self.encode(), directory / MANIFEST_TMP)


def load_manifest(directory: Path) -> Manifest | None:
    """The manifest in `directory`; None when there is none; CorruptLog when it is damaged."""
    try:
        data = (directory / MANIFEST).read_bytes()
    except FileNotFoundError:
        return None
    return Manifest.decode(data)


def _count(value: object, none_ok: bool = False) -> bool:
    if value is None:
        return none_ok
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
