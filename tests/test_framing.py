"""LineFramer: lines out of arbitrary chunks, and a hard bound on what it buffers."""

from __future__ import annotations

import random

import pytest

from replica.framing import LineFramer


def feed_all(framer: LineFramer, chunks: list[bytes]) -> list[bytes]:
    lines: list[bytes] = []
    for chunk in chunks:
        lines += framer.feed(chunk)
    return lines


def test_many_lines_in_one_chunk() -> None:
    framer = LineFramer(100)
    assert framer.feed(b"a\nbb\nccc\n") == [b"a", b"bb", b"ccc"]
    assert framer.buffered == 0


def test_a_line_split_across_chunks() -> None:
    framer = LineFramer(100)
    assert framer.feed(b'{"type":') == []
    assert framer.feed(b' "mv_read"') == []
    assert framer.feed(b'}\n{"a"') == [b'{"type": "mv_read"}']
    assert framer.feed(b":1}\n") == [b'{"a":1}']


def test_every_split_point_gives_the_same_lines() -> None:
    data = b"first\r\nsecond\n\nthird line\r\n\r\nfourth\n"
    expected = [b"first", b"second", b"third line", b"fourth"]
    for cut in range(len(data) + 1):
        framer = LineFramer(64)
        assert feed_all(framer, [data[:cut], data[cut:]]) == expected, cut


def test_random_chunking_gives_the_same_lines() -> None:
    rng = random.Random(7)
    lines = [bytes(rng.choice(b"abc{}:") for _ in range(rng.randrange(1, 50))) for _ in range(300)]
    data = b"".join(line + b"\n" for line in lines)
    for _ in range(50):
        cuts = sorted(rng.sample(range(len(data)), 40))
        chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        framer = LineFramer(64)
        assert feed_all(framer, chunks) == lines
        assert not framer.overflowed


def test_carriage_return_before_newline_is_stripped() -> None:
    framer = LineFramer(100)
    assert framer.feed(b"one\r\ntwo\r") == [b"one"]
    assert framer.feed(b"\n") == [b"two"]


def test_a_carriage_return_inside_a_line_is_kept() -> None:
    assert LineFramer(100).feed(b"a\rb\n") == [b"a\rb"]


def test_empty_lines_are_skipped() -> None:
    framer = LineFramer(100)
    assert framer.feed(b"\n\n\r\nx\n\n") == [b"x"]


def test_a_line_of_exactly_the_limit_is_accepted() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"0123456789\n") == [b"0123456789"]
    assert framer.feed(b"01234") == []
    assert framer.feed(b"56789") == []
    assert framer.feed(b"\n") == [b"0123456789"]
    assert not framer.overflowed


def test_one_byte_over_the_limit_overflows() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"0123456789A\n") == []
    assert framer.overflowed


def test_overflow_is_seen_before_the_newline_arrives() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"0123456") == []
    assert not framer.overflowed
    assert framer.feed(b"789AB") == []
    assert framer.overflowed
    assert framer.buffered == 0


def test_a_huge_chunk_without_newline_is_never_buffered() -> None:
    framer = LineFramer(1024)
    assert framer.feed(b"x" * 1_000_000) == []
    assert framer.overflowed
    assert framer.buffered == 0


def test_lines_before_the_overflow_in_the_same_chunk_are_kept() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"one\ntwo\n" + b"x" * 11 + b"\nthree\n") == [b"one", b"two"]
    assert framer.overflowed


def test_lines_before_an_unterminated_overflow_are_kept() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"one\ntwo\n" + b"x" * 11) == [b"one", b"two"]
    assert framer.overflowed


def test_nothing_is_returned_after_an_overflow() -> None:
    framer = LineFramer(10)
    framer.feed(b"x" * 20)
    assert framer.feed(b"\nok\n") == []
    assert framer.overflowed


def test_recover_skips_the_oversized_line_and_keeps_what_followed() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"a\n" + b"x" * 20 + b"\nb\nc") == [b"a"]
    assert framer.overflowed
    assert framer.recover() == [b"b"]
    assert not framer.overflowed
    assert framer.feed(b"\n") == [b"c"]


def test_recover_from_an_unterminated_line_skips_up_to_its_newline() -> None:
    framer = LineFramer(10)
    framer.feed(b"y" * 5)
    framer.feed(b"y" * 10)
    assert framer.overflowed
    assert framer.recover() == []
    assert framer.feed(b"y" * 1000) == []
    assert framer.feed(b"yyy\nnext\n") == [b"next"]
    assert not framer.overflowed


def test_recover_when_nothing_overflowed_is_a_no_op() -> None:
    framer = LineFramer(10)
    assert framer.recover() == []
    assert framer.feed(b"a\n") == [b"a"]


def test_two_oversized_lines_in_one_chunk_each_overflow() -> None:
    framer = LineFramer(4)
    assert framer.feed(b"ok\n123456\nfine\n7890123\nlast\n") == [b"ok"]
    assert framer.recover() == [b"fine"]
    assert framer.overflowed
    assert framer.recover() == [b"last"]
    assert not framer.overflowed


def test_a_buffered_start_completed_over_the_limit_overflows() -> None:
    framer = LineFramer(10)
    assert framer.feed(b"012345") == []
    assert framer.feed(b"6789AB\nok\n") == []
    assert framer.overflowed
    assert framer.recover() == [b"ok"]


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LineFramer(0)
