"""The commit log: records round-trip, a torn tail is cut off, damage is told apart from one."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.durable.commit_log import (
    FILL_CHUNK,
    HEADER,
    SECTOR,
    CorruptLog,
    Segment,
    SegmentBroken,
    fitting_preallocation,
    frame,
    list_segments,
    next_valid_record,
    parse,
    read_segment,
    remove_segments,
    scan_segment,
    segment_name,
    segment_seq,
    written_end,
)

PAYLOADS = [b"\x01\x01first", b"\x04\x01second record", b"\x7f\x01\x01k"]


def whole_size(payloads: list[bytes]) -> int:
    return sum(HEADER.size + len(p) for p in payloads)


def written(directory: Path, batches: list[list[bytes]], preallocate: int = 0) -> Path:
    segment = Segment.create(directory, 1, preallocate)
    for batch in batches:
        segment.append(frame(batch))
    segment.close()
    return segment.path


def test_segment_names_hold_their_sequence_number(tmp_path: Path) -> None:
    assert segment_name(7) == "log.000007"
    assert segment_seq("log.000007") == 7
    assert segment_seq("log.1234567") == 1234567
    assert segment_seq("log.7") is None
    assert segment_seq("data.mdb") is None
    for name in ("log.000010", "log.000002", "notes.txt", "lock.mdb"):
        (tmp_path / name).write_bytes(b"")
    assert list_segments(tmp_path) == [2, 10]
    remove_segments(tmp_path, [2, 3])
    assert list_segments(tmp_path) == [10]


@pytest.mark.parametrize("preallocate", [0, 64 * 1024])
def test_batches_read_back_in_order(tmp_path: Path, preallocate: int) -> None:
    path = written(tmp_path, [PAYLOADS[:2], PAYLOADS[2:], [b"x" * 5000]], preallocate)
    assert read_segment(path) == [*PAYLOADS, b"x" * 5000]
    assert path.stat().st_size == max(
        preallocate, sum(HEADER.size + len(p) for p in PAYLOADS) + 5008
    )


def test_preallocated_space_is_zeros_on_disk_before_any_append(tmp_path: Path) -> None:
    Segment.create(tmp_path, 3, 8192).close()
    path = tmp_path / segment_name(3)
    assert path.read_bytes() == bytes(8192)
    assert read_segment(path) == []


def test_an_empty_payload_cannot_be_framed() -> None:
    with pytest.raises(ValueError, match="empty payload"):
        frame([b"ok", b""])


def test_a_segment_is_never_created_over_another(tmp_path: Path) -> None:
    written(tmp_path, [PAYLOADS])
    with pytest.raises(FileExistsError):
        Segment.create(tmp_path, 1)
    assert read_segment(tmp_path / segment_name(1)) == PAYLOADS


# -- torn tails and corruption -----------------------------------------------------------------


@pytest.mark.parametrize("preallocate", [0, 64 * 1024])
@pytest.mark.parametrize(
    "torn",
    [
        HEADER.pack(40, 0)[:5],  # the header itself cut short
        HEADER.pack(40, 0) + b"\x01\x01[",  # the payload cut short
    ],
)
def test_a_torn_last_record_is_cut_off(tmp_path: Path, preallocate: int, torn: bytes) -> None:
    path = written(tmp_path, [PAYLOADS[:2], PAYLOADS[2:]], preallocate)
    with path.open("r+b") as file:
        file.seek(whole_size(PAYLOADS))
        file.write(torn)
    assert read_segment(path) == PAYLOADS
    assert path.stat().st_size == whole_size(PAYLOADS)
    assert read_segment(path) == PAYLOADS  # and it stays cut


@pytest.mark.parametrize("preallocate", [0, 64 * 1024])
def test_a_whole_last_record_whose_checksum_fails_is_damage_not_a_torn_tail(
    tmp_path: Path, preallocate: int
) -> None:
    """Every byte of it was written, so it was acknowledged: cutting it would lose a commit."""
    path = written(tmp_path, [PAYLOADS[:2], PAYLOADS[2:]], preallocate)
    data = bytearray(path.read_bytes())
    data[whole_size(PAYLOADS) - 1] ^= 0x01  # inside the last payload
    path.write_bytes(bytes(data))
    last = whole_size(PAYLOADS[:2])
    with pytest.raises(
        CorruptLog,
        match=f"log.000001 has a damaged last record at byte {last}: all 12 bytes of it",
    ):
        read_segment(path)
    assert path.read_bytes() == bytes(data)


def test_a_record_with_a_sector_never_written_is_a_torn_tail(tmp_path: Path) -> None:
    """A crash during a write of several sectors can leave one inside it as zeros."""
    big = b"\x01\x01" + b"v" * (4 * SECTOR)
    path = written(tmp_path, [PAYLOADS, [big]], 64 * 1024)
    data = bytearray(path.read_bytes())
    start = whole_size(PAYLOADS)
    hole = -(-start // SECTOR) * SECTOR + SECTOR  # a whole sector inside the big record
    data[hole : hole + SECTOR] = bytes(SECTOR)
    path.write_bytes(bytes(data))
    scan = scan_segment(bytes(data), path.name)
    assert (scan.payloads, scan.end, scan.torn) == (PAYLOADS, start, HEADER.size + len(big))
    assert read_segment(path) == PAYLOADS
    assert path.stat().st_size == start


def test_salvage_skips_damage_and_keeps_the_records_after_it(tmp_path: Path) -> None:
    path = written(tmp_path, [PAYLOADS, [b"\x01\x01after"]], 64 * 1024)
    data = bytearray(path.read_bytes())
    data[HEADER.size + 3] ^= 0xFF  # inside the first payload
    first = HEADER.size + len(PAYLOADS[0])
    scan = scan_segment(bytes(data), path.name, salvage=True)
    assert scan.payloads == [*PAYLOADS[1:], b"\x01\x01after"]
    assert scan.skipped == [(0, first)]
    data[first + HEADER.size + 2] ^= 0xFF  # the second record too: one stretch
    last = bytearray(frame([b"\x01\x01after"]))
    data[whole_size(PAYLOADS) + HEADER.size + 1] ^= 0x01  # and the whole last record
    scan = scan_segment(bytes(data), path.name, salvage=True)
    assert scan.payloads == [PAYLOADS[2]]
    assert scan.skipped == [(0, whole_size(PAYLOADS[:2])), (whole_size(PAYLOADS), len(last))]


@pytest.mark.parametrize("preallocate", [0, 64 * 1024])
def test_a_damaged_record_before_whole_ones_is_corruption(tmp_path: Path, preallocate: int) -> None:
    path = written(tmp_path, [PAYLOADS], preallocate)
    data = bytearray(path.read_bytes())
    data[HEADER.size + 3] ^= 0xFF  # inside the first payload
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLog, match=r"damaged record at byte 0 and a valid one at byte"):
        read_segment(path)
    assert path.read_bytes() == bytes(data)  # nothing was cut


def test_a_zeroed_record_before_whole_ones_is_corruption(tmp_path: Path) -> None:
    """Zeros read as the end of a preallocated segment, unless records follow them."""
    path = written(tmp_path, [PAYLOADS], 64 * 1024)
    data = bytearray(path.read_bytes())
    first = HEADER.size + len(PAYLOADS[0])
    data[:first] = bytes(first)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptLog, match=f"valid one at byte {first}"):
        read_segment(path)


def test_the_search_for_a_valid_record_skips_zeros_and_finds_one_late() -> None:
    record = frame([b"\x02\x01late"])
    data = b"\x00\x00\x07garbage" + bytes(100_000) + b"\x01\x00\x00" + record + bytes(10)
    assert next_valid_record(data, 1) == len(data) - len(record) - 10
    assert next_valid_record(data[: -len(record) - 10], 1) is None
    assert next_valid_record(bytes(50), 0) is None


def test_the_written_end_is_past_the_last_byte_that_is_not_zero() -> None:
    data = b"\x05abc" + bytes(3 << 20) + b"z" + bytes(10)
    assert written_end(data, 0) == len(data) - 10
    assert written_end(data, len(data) - 10) == len(data) - 10  # nothing after it but zeros
    assert written_end(bytes(100), 0) == 0
    assert written_end(b"", 0) == 0


@settings(max_examples=60)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=12),
    cut=st.integers(min_value=0),
)
def test_any_prefix_of_a_log_reads_as_the_records_wholly_inside_it(
    payloads: list[bytes], cut: int
) -> None:
    data = frame(payloads)
    cut %= len(data) + 1
    expected, end = [], 0
    for payload in payloads:
        if end + HEADER.size + len(payload) > cut:
            break
        expected.append(payload)
        end += HEADER.size + len(payload)
    assert parse(data[:cut]) == (expected, end)
    if len(expected) < len(payloads):  # zeros after the cut are the rest of a preallocated file
        missing = frame([payloads[len(expected)]])[cut - end :]
        if len(missing) <= 64 and not missing.strip(b"\x00"):  # the zeros complete the record
            expected.append(payloads[len(expected)])
            end = cut + len(missing)
    assert parse(data[:cut] + bytes(64)) == (expected, end)


# -- appends that fail -------------------------------------------------------------------------


def test_an_append_that_failed_leaves_the_segment_closed_to_appends(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1)
    segment.append(frame(PAYLOADS[:1]))
    segment.close()  # the descriptor is gone: the next write fails, as a full disk would
    with pytest.raises(OSError):
        segment.append(frame(PAYLOADS[1:]))
    assert segment.broken
    with pytest.raises(SegmentBroken, match=r"an earlier append to log\.000001 failed"):
        segment.append(frame(PAYLOADS[1:]))
    assert read_segment(segment.path) == PAYLOADS[:1]


# -- room on the disk --------------------------------------------------------------------------


def test_preallocation_takes_at_most_a_quarter_of_the_free_space_in_whole_chunks() -> None:
    mib = FILL_CHUNK
    assert fitting_preallocation(32 * mib, 10 << 30) == 32 * mib  # a large disk: all of it
    assert fitting_preallocation(32 * mib, 24 * mib) == 6 * mib  # a small one: a quarter
    assert fitting_preallocation(32 * mib, 24 * mib + 1) == 6 * mib
    assert fitting_preallocation(32 * mib, 7 * mib) == mib
    assert fitting_preallocation(32 * mib, 4 * mib - 1) == 0  # very little: none
    assert fitting_preallocation(0, 10 << 30) == 0
    assert fitting_preallocation(32 * mib, 0) == 0
