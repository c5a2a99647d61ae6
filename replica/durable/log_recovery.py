"""Reading a data dir's log back after a stop: each segment checked against the manifest.

The node runs it as its store opens, reading every segment no checkpoint
covers, to load it; each log writer runs it as it starts, reading only the
segments that were still taking appends when their writer stopped, to seal
them.  What it refuses, each with a `CorruptLog` of one line naming the file:

- a manifest (`replica.durable.log_manifest`) that is damaged, or missing from a data
  dir that has had one;
- a listed segment that is missing;
- a sealed segment without its recorded length of whole, valid records;
- a segment that was taking appends and is shorter than its preallocation
  (it was truncated), or whose records are followed by damage rather than a
  torn tail (`replica.durable.commit_log.scan_segment`).

A torn tail is cut, logged at WARNING with the segment, the offset and the
bytes.  Segments on disk that the manifest does not list are read as found: a
segment made just before a crash could list it (all zeros), or a log from
before manifests.  Every segment is then sealed at the length read, and the
manifest saved before any cut is made: a crash in between leaves a segment
longer than its sealed length, which reads back the same.

With `salvage`, damage is cut out instead, each cut logged at ERROR: a
missing segment is forgotten, a damaged stretch skipped (the records after it
kept), and a segment that lost anything is rewritten as the records that were
read, so the checkpointer can read it.  Never by default: what was cut had
been acknowledged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from replica.durable.commit_log import (
    CorruptLog,
    frame,
    list_segments,
    remove_segments,
    replace_durably,
    scan_segment,
    segment_name,
    truncate_segment,
    written_end,
)
from replica.durable.log_manifest import MANIFEST, Manifest, SegmentEntry, load_manifest

log = logging.getLogger("replica.durable.log_recovery")


@dataclass
class Recovered:
    manifest: Manifest  # every segment in it sealed, and saved
    payloads: list[list[bytes]] = field(default_factory=list)  # of each segment read, in order
    salvaged: bool = False  # salvage cut out something that had been acknowledged


def recover_log(
    directory: Path,
    checkpointed: int,
    *,
    required: bool,
    salvage: bool = False,
    read_sealed: bool = True,
) -> Recovered:
    """Check, read and seal the segments after `checkpointed`; CorruptLog on damage.

    `required`: the data dir has had a manifest, so its absence is damage.
    `read_sealed`: read the sealed segments too (the node, to load them), not
    only check their size (a writer taking over).
    """
    run = _Recovery(directory, salvage)
    manifest = run.manifest(required)
    on_disk = list_segments(directory)
    remove_segments(directory, (seq for seq in on_disk if seq <= checkpointed))
    manifest.drop([seq for seq in manifest.segments if seq <= checkpointed])
    unlisted = {seq for seq in on_disk if seq > checkpointed and seq not in manifest.segments}
    for seq in unlisted:
        manifest.add(seq, 0)
    payloads = []
    for seq, entry in list(manifest.segments.items()):
        read = run.segment(manifest, seq, entry, read_sealed, seq in unlisted)
        if read is not None:
            payloads.append(read)
    manifest.save(directory)
    for seq, end, cut in run.cuts:
        log.warning(
            "log segment %s: cut a torn tail of %d bytes at byte %d (a write never acknowledged)",
            segment_name(seq),
            cut,
            end,
        )
        truncate_segment(directory / segment_name(seq), end)
    return Recovered(manifest, payloads, run.salvaged)


class _Recovery:
    def __init__(self, directory: Path, salvage: bool) -> None:
        self.directory = directory
        self.salvage = salvage
        self.salvaged = False
        self.listed = False  # a manifest was found: a segment it does not list is unexpected
        # (seq, offset, bytes) to cut once the manifest is saved
        self.cuts: list[tuple[int, int, int]] = []

    def damage(self, why: str) -> None:
        """Refuse the log; when salvaging, say what is lost and go on."""
        if not self.salvage:
            raise CorruptLog(why)
        log.error("salvage: %s: what it held is lost", why)
        self.salvaged = True

    def manifest(self, required: bool) -> Manifest:
        try:
            manifest = load_manifest(self.directory)
        except CorruptLog as exc:
            self.damage(str(exc))
            return Manifest()
        if manifest is None:
            if required:
                self.damage(f"the log manifest {MANIFEST} is missing")
            return Manifest()
        self.listed = True
        return manifest

    def segment(
        self, manifest: Manifest, seq: int, entry: SegmentEntry, read_sealed: bool, unlisted: bool
    ) -> list[bytes] | None:
        """The segment's records once checked (None when not read), sealed in `manifest`."""
        path = self.directory / segment_name(seq)
        name, sealed = path.name, entry.length
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self.damage(f"log segment {name} is listed in {MANIFEST} but missing")
            manifest.drop([seq])
            return None
        if sealed is not None and size < sealed:
            self.damage(
                f"log segment {name} is {size} bytes, shorter than the {sealed} bytes"
                " of records it was sealed with"
            )
        elif sealed is None and size < entry.preallocated:
            self.damage(
                f"log segment {name} is {size} bytes, shorter than the {entry.preallocated}"
                " it was preallocated: it was truncated"
            )
        elif sealed is not None and not read_sealed:
            return None
        data = path.read_bytes()
        limit = len(data) if sealed is None else min(sealed, len(data))
        scan = scan_segment(data[:limit], name, salvage=self.salvage)
        if unlisted and scan.payloads and self.listed:
            log.warning("log segment %s is not in %s: read as found", name, MANIFEST)
        lost = list(scan.skipped)
        if sealed is not None and (scan.torn or scan.end < sealed) and size >= sealed:
            if not self.salvage:
                raise CorruptLog(
                    f"log segment {name} has a damaged record at byte {scan.end},"
                    f" within the {sealed} bytes of records it was sealed with"
                )
            lost.append((scan.end, limit - scan.end))
        if lost:
            for offset, count in lost:
                log.error(
                    "salvage: log segment %s: cut %d damaged bytes at byte %d", name, count, offset
                )
            self.salvaged = True
            manifest.seal(seq, _rewrite(path, scan.payloads))
            return scan.payloads
        manifest.seal(seq, scan.end)
        tail = written_end(data, scan.end) - scan.end  # a torn write, or an append that failed
        if tail:
            self.cuts.append((seq, scan.end, tail))
        return scan.payloads


def _rewrite(path: Path, payloads: list[bytes]) -> int:
    """Replace a segment by the records read from it, durably; the new length."""
    data = frame(payloads)
    replace_durably(path, data, path.with_name(path.name + ".salvaged"))
    return len(data)
