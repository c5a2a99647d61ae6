"""Compressed delta batches: the `deltas_z` field of the `<keyspace>_merge` messages.

A batch of per-key states repeats the same field names and node ids for every
key, so zlib at its fastest level shrinks it several times over for about a
millisecond per 256 KiB.  Lines are JSON, so the compressed bytes travel as
base64.  Small batches stay plain `deltas`, readable in a log or a Maelstrom
trace; receivers accept both forms.

Decompression is bounded: a peer cannot make a node inflate a small line into
unbounded memory.
"""

from __future__ import annotations

import base64
import binascii
import zlib

from replica.crdt.malformed import Malformed

COMPRESS_FROM_BYTES = 1024  # smaller batches gain little and stay readable
LEVEL = 1


def pack(array_json: bytes) -> str:
    """Base64 of the zlib-compressed JSON array of deltas."""
    return base64.b64encode(zlib.compress(array_json, LEVEL)).decode("ascii")


def unpack(text: object, max_bytes: int) -> bytes:
    """The JSON array a `deltas_z` field carries, refusing more than `max_bytes` of it."""
    if not isinstance(text, str):
        raise Malformed("field 'deltas_z' must be a base64 string")
    try:
        compressed = base64.b64decode(text, validate=True)
        inflater = zlib.decompressobj()
        data = inflater.decompress(compressed, max_bytes)
    except (binascii.Error, zlib.error) as exc:
        raise Malformed(f"field 'deltas_z' is not base64 zlib data: {exc}") from None
    if inflater.unconsumed_tail:
        raise Malformed(f"field 'deltas_z' inflates to more than {max_bytes} bytes")
    if not inflater.eof:
        raise Malformed("field 'deltas_z' is truncated")
    return data
