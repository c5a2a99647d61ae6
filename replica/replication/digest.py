"""Bucketed hashes of a keyspace, for anti-entropy: find divergent keys cheaply.

Dynamo and Riak's active anti-entropy compare Merkle trees so that replicas in
agreement exchange a few hashes instead of their data.  This is a two-level
tree: a root over `BUCKETS` bucket hashes, each bucket the XOR of the 64-bit
hashes of its (key, state) pairs.  XOR makes an update O(1): the key's old hash
is XORed out and the new one in, with no ordering to maintain.

Hashing a state means encoding it, which should not sit on the write path, so
changes only mark a key dirty; hashes are brought up to date once per key
however often it was written in between, a bounded slice at a time
(`refresh(limit)`) so that a million dirty keys (a restart loads every key)
never stall the node for seconds, and fully when a digest is asked for.
Equal states encode to equal bytes because every state keeps a canonical
order and the encoding sorts object keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any

BUCKETS = 256

Encode = Callable[[str], bytes | None]
"""The canonical encoding of a key's current state, or None if the key is absent."""


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def bucket_of(key: str) -> int:
    return _hash(key.encode()) % BUCKETS


class KeyspaceDigest:
    """Incrementally maintained bucket hashes of one keyspace.

    Each bucket keeps its keys' hashes in a dict of its own, so a key costs
    one table entry, and listing a bucket's keys needs no second index.
    """

    def __init__(self, encode: Encode) -> None:
        self._encode = encode
        self._buckets = [0] * BUCKETS
        self._bucket_keys: list[dict[str, int]] = [{} for _ in range(BUCKETS)]
        self._dirty: set[str] = set()

    def changed(self, key: str) -> None:
        self._dirty.add(key)

    @property
    def dirty(self) -> int:
        """How many keys changed since they were last hashed."""
        return len(self._dirty)

    def refresh(self, limit: int | None = None) -> None:
        """Rehash the keys changed since the last refresh, or `limit` of them."""
        if limit is None or limit >= len(self._dirty):
            dirty, self._dirty = self._dirty, set()
            for key in dirty:
                self._rehash(key)
            return
        pop = self._dirty.pop
        for _ in range(limit):
            self._rehash(pop())

    def _rehash(self, key: str) -> None:
        bucket = bucket_of(key)
        hashes = self._bucket_keys[bucket]
        old = hashes.pop(key, None)
        if old is not None:
            self._buckets[bucket] ^= old
        encoded = self._encode(key)
        if encoded is None:
            return
        new = _hash(key.encode() + b"\0" + encoded)
        hashes[key] = new
        self._buckets[bucket] ^= new

    def root(self) -> int:
        self.refresh()
        return _hash(b"".join(h.to_bytes(8, "big") for h in self._buckets))

    def buckets(self) -> list[int]:
        self.refresh()
        return list(self._buckets)

    def keys_in(self, buckets: Iterable[int]) -> dict[str, int]:
        """Each key of the given buckets with its state hash."""
        self.refresh()
        out: dict[str, int] = {}
        for bucket in buckets:
            if 0 <= bucket < BUCKETS:
                out.update(self._bucket_keys[bucket])
        return out


def differing_buckets(mine: list[int], theirs: list[Any]) -> list[int]:
    """Buckets whose hashes differ; a malformed or short list differs everywhere it is wrong."""
    return [i for i in range(BUCKETS) if i >= len(theirs) or theirs[i] != mine[i]]


def compare_keys(mine: dict[str, int], theirs: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(keys to push: they lack them or differ, keys to pull: we lack them or differ)."""
    push = [key for key, h in mine.items() if theirs.get(key) != h]
    pull = [key for key, h in theirs.items() if mine.get(key) != h]
    return push, pull
