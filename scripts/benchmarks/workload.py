"""What the benchmark writes and asks: key names, values, and mixes of pre-encoded requests.

Values are recomputable from who wrote them and the key's index, so every
read can be checked against what must be there.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import random
from collections.abc import Iterator, Sequence

import orjson

from .report import Body

OPS = ("mv_write", "mv_read", "kv_put", "lww_write", "mvcc_put", "mvcc_get")
PRELOAD_FOR = {"mv_read": "mv_write", "mvcc_get": "mvcc_put"}  # reads need keys to read

Mix = list[tuple[str, int]]


def key_name(index: int) -> str:
    return f"key{index:07d}"


def value_for(node_id: str, index: int, size: int) -> str:
    """`size` characters: who wrote it (so a stray value is recognisable), then hex noise.

    The noise is a hash of the writer and index, so the expected values can be
    recomputed, and it does not flatter any compression the way padding would.
    """
    text = f"{node_id}:{index}:"
    noise = hashlib.shake_128(text.encode()).hexdigest(max(1, size // 2 + 1))
    return (text + noise)[:size]


def encode(body: Body, msg_id: int) -> bytes:
    return orjson.dumps({**body, "msg_id": msg_id}) + b"\n"


def parse_mix(text: str) -> Mix:
    """`mv_write,mv_read` or `mv_write:3,mv_read:1`: each op with its weight (default 1)."""
    mix: Mix = []
    for part in text.split(","):
        op, _, weight_text = part.strip().partition(":")
        if op not in OPS:
            raise argparse.ArgumentTypeError(f"unknown op {op!r}: one of {', '.join(OPS)}")
        try:
            weight = int(weight_text) if weight_text else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer weight: {part!r}") from None
        if weight < 1:
            raise argparse.ArgumentTypeError(f"a weight must be at least 1: {part!r}")
        mix.append((op, weight))
    if not mix:
        raise argparse.ArgumentTypeError("an empty mix")
    return mix


def mix_text(mix: Mix) -> str:
    return ",".join(f"{op}:{w}" for op, w in mix)


def request_body(op: str, key_index: int, serial: int, size: int) -> Body:
    """One request of `op` on key `key_index`; `serial` makes kv_put clocks advance."""
    key = key_name(key_index)
    value = value_for("bench", serial, size)
    if op == "mv_write":
        return {"type": op, "key": key, "value": value}
    if op == "kv_put":
        return {"type": op, "key": key, "value": value, "clock": [serial + 1]}
    if op in ("lww_write", "mvcc_put"):  # the node's hybrid clock supplies the timestamp
        return {"type": op, "key": key, "value": value}
    return {"type": op, "key": key}  # mv_read, mvcc_get: the newest


def request_pool(mix: Mix, keys: int, lines: int, size: int) -> list[bytes]:
    """`lines` encoded requests drawn from `mix` on random keys, msg_id = position + 1.

    A connection cycles through the pool from its own offset; the pool is far
    longer than a window, so no line is ever in flight twice on one connection.
    """
    rng = random.Random(5)
    ops = rng.choices([op for op, _ in mix], weights=[w for _, w in mix], k=lines)
    return [
        encode(request_body(op, rng.randrange(keys), i, size), i + 1) for i, op in enumerate(ops)
    ]


def cycle_from(pool: Sequence[bytes], offset: int) -> Iterator[bytes]:
    return itertools.cycle([*pool[offset:], *pool[:offset]])


def fill_lines(op: str, indices: range, size: int) -> Iterator[bytes]:
    """One write of `op` per key of `indices`, encoded as they are sent."""
    for i in indices:
        yield encode({"type": op, "key": key_name(i), "value": value_for("n1", i, size)}, i + 1)


def split_range(count: int, parts: int) -> list[range]:
    share = -(-count // parts)
    return [range(i, min(i + share, count)) for i in range(0, count, share)]


def preload_ops(mix: Mix) -> list[str]:
    """The writes that must fill every key before the mix's reads find anything."""
    return sorted({PRELOAD_FOR[op] for op, _ in mix if op in PRELOAD_FOR})
