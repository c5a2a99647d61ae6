"""What both ends of the durable pipes agree on: node to log writer, log writer to checkpointer.

Sans-I/O: encoders and parsers of bytes only, so each end's process loop is
a thin adapter and the format is stated once.

Node -> log writer (`python -m replica.durable.log_writer DIR CHECKPOINTED
--map-size ...`, `LogSettings`).  Requests are `u32 LE length | kind |
body`: `APPEND` (the body is one log record, `replica.durable.records`) or
`CLOSE` (no body).  The writer answers `ready` once it has its segment (or
`error 1 <why>` and exits), then one result per request, in order,
consecutive alike ones folded into a line: `ok <n>` or `error <n> <why>`.
After `CLOSE` it checkpoints everything, answers and exits.  Between results
it may send a line of its own after each checkpoint, `checkpoint {"keys",
"ms", "error"}`, which the node counts for `status`.

Log writer -> checkpointer (`python -m replica.durable.checkpointer DIR
MAP_SIZE WRITER_PID`).  One line per checkpoint: the sequence numbers of the
sealed segments separated by spaces, after the word `paced` for a
background checkpoint; the answer is `ok <keys written>` once the last LMDB
transaction carrying them is synced, or `error <why>`.
"""

from __future__ import annotations

import argparse
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

LOG_WRITER = "replica.durable.log_writer"
CHECKPOINTER = "replica.durable.checkpointer"
"""The modules each helper process runs as (`python -m`), which is how tools find them."""

# -- node -> log writer ----------------------------------------------------------------------

REQUEST = struct.Struct("<IB")
"""A request's header: the body's length, then its kind."""
APPEND, CLOSE = 1, 3
READY = b"ready\n"
CHECKPOINT_LINE = b"checkpoint "
"""Starts a line the writer sends of its own after a checkpoint: JSON `{keys, ms, error}`."""


@dataclass(frozen=True)
class LogSettings:
    """How the log writer runs its log; passed on its command line."""

    map_size: int  # LMDB's, for the checkpointer
    segment_bytes: int  # a segment this large is closed at once
    checkpoint_interval_s: float
    preallocate: bool  # zero-fill new segments (halves the cost of a sync)

    def to_args(self) -> list[str]:
        return [
            f"--map-size={self.map_size}",
            f"--segment-bytes={self.segment_bytes}",
            f"--checkpoint-interval={self.checkpoint_interval_s}",
            f"--preallocate={int(self.preallocate)}",
        ]


def log_writer_argv(path: Path, checkpointed: int, settings: LogSettings) -> list[str]:
    """The log writer's arguments after `-m replica.durable.log_writer`."""
    return [str(path), str(checkpointed), *settings.to_args()]


def parse_log_writer_argv(argv: list[str]) -> tuple[Path, int, LogSettings]:
    """What `log_writer_argv` wrote: (data dir, newest segment LMDB holds, settings)."""
    parser = argparse.ArgumentParser(prog=f"python -m {LOG_WRITER}")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("checkpointed", type=int, help="the newest segment LMDB holds")
    parser.add_argument("--map-size", type=int, required=True)
    parser.add_argument("--segment-bytes", type=int, required=True)
    parser.add_argument("--checkpoint-interval", type=float, required=True)
    parser.add_argument("--preallocate", type=int, choices=(0, 1), required=True)
    args = parser.parse_args(argv)
    settings = LogSettings(
        args.map_size, args.segment_bytes, args.checkpoint_interval, bool(args.preallocate)
    )
    return args.data_dir, args.checkpointed, settings


def encode_request(kind: int, body: bytes = b"") -> bytes:
    return REQUEST.pack(len(body), kind) + body


def split_requests(buffer: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    """The whole requests at the start of `buffer`, and how many bytes they took."""
    requests, pos, head = [], 0, REQUEST.size
    while len(buffer) - pos >= head:
        length, kind = REQUEST.unpack_from(buffer, pos)
        end = pos + head + length
        if end > len(buffer):
            break
        requests.append((kind, bytes(buffer[pos + head : end])))
        pos = end
    return requests, pos


class Results:
    """The answers to a read's worth of requests, consecutive alike ones folded into a line."""

    def __init__(self) -> None:
        self.lines: list[tuple[str | None, int]] = []

    def add(self, failure: str | None, count: int = 1) -> None:
        if self.lines and self.lines[-1][0] == failure:
            count += self.lines.pop()[1]
        self.lines.append((failure, count))

    def encode(self) -> bytes:
        return b"".join(result_line(failure, count) for failure, count in self.lines)


def result_line(failure: str | None, count: int = 1) -> bytes:
    """`ok <count>`, or `error <count> <failure>` on one line."""
    if failure is None:
        return f"ok {count}\n".encode()
    return f"error {count} {failure.replace(chr(10), ' ')}\n".encode()


def parse_result(line: bytes) -> tuple[int | None, str | None]:
    """(how many requests a result line answers, why they failed or None); (None, None) at EOF."""
    status, _, rest = line.strip().decode(errors="replace").partition(" ")
    count, _, why = rest.partition(" ")
    if status not in ("ok", "error") or not count.isdigit():
        return None, None
    return int(count), (why or "the log writer failed") if status == "error" else None


def checkpoint_line(keys: int, ms: float, failure: str | None) -> bytes:
    """What the writer tells the node of a checkpoint, between its results."""
    report = {"keys": keys, "ms": round(ms, 1), "error": failure}
    return CHECKPOINT_LINE + orjson.dumps(report) + b"\n"


def parse_checkpoint_line(line: bytes) -> dict[str, Any] | None:
    """The `{keys, ms, error}` of a checkpoint line, or None when it is not one."""
    if not line.startswith(CHECKPOINT_LINE):
        return None
    try:
        report = orjson.loads(line[len(CHECKPOINT_LINE) :])
    except orjson.JSONDecodeError:
        return None
    return report if isinstance(report, dict) else None


# -- log writer -> checkpointer --------------------------------------------------------------

PACED = "paced"
"""The first word of a checkpoint request that should leave the disk to appends."""


def checkpointer_argv(path: Path, map_size: int, writer_pid: int) -> list[str]:
    """The checkpointer's arguments after `-m replica.durable.checkpointer`."""
    return [str(path), str(map_size), str(writer_pid)]


def parse_checkpointer_argv(argv: list[str]) -> tuple[Path, int, int]:
    """What `checkpointer_argv` wrote: (data dir, LMDB map size, the writer's pid)."""
    return Path(argv[0]), int(argv[1]), int(argv[2])


def encode_checkpoint_request(seqs: list[int], *, paced: bool) -> bytes:
    return " ".join([PACED] * paced + [str(seq) for seq in seqs]).encode() + b"\n"


def parse_checkpoint_request(line: bytes) -> tuple[list[int], bool]:
    """(segments, paced) of a request line; ValueError when it is not one."""
    words = line.decode().split()
    paced = words[:1] == [PACED]
    return [int(seq) for seq in words[paced:]], paced


def checkpoint_reply(keys: int | None, failure: str | None = None) -> bytes:
    """`ok <keys>`, or `error <failure>` on one line."""
    if failure is not None:
        return f"error {failure}".replace("\n", " ").encode() + b"\n"
    return f"ok {keys}\n".encode()


def parse_checkpoint_reply(line: bytes) -> tuple[int | None, str | None]:
    """(keys written, None) or (None, why it failed); (None, None) for no line at all."""
    if line.startswith(b"ok "):
        return int(line.split()[1]), None
    if not line:
        return None, None
    return None, line.decode(errors="replace").removeprefix("error ").strip()
