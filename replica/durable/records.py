"""How key states are written down: one value per key in LMDB, one record per commit in the log.

An LMDB value is its type's tag (`replica.crdt.registry`), the value
version, JSON `[key, stored form]` (each state's `to_stored`), then the
CRC-32 of all that, little-endian.  LMDB checks no data, so without the
checksum a changed digit in a value would load as another value.  Placed
last, the checksum is checked by one `zlib.crc32` over the whole value,
which then gives a constant (`CRC_RESIDUE`), without a slice: recovery
checks every value.  The key travels inside the value because LMDB bounds
key length; longer keys are indexed by their hash (`db_key_of`).

A log record carries a whole commit: `BATCH_TAG`, the record version, then
one JSON array of `[type tag, key, stored form]` entries, with `null` for a
key that is gone: one `orjson.dumps` per commit rather than one per key.

Every type, its tag and its stored form come from the registry, so a new
type is stored without a change here.  A record that cannot be decoded
raises `StorageError` (`DamagedRecord` when it fails its checksum) instead
of being skipped: starting with part of the data would look like success
and silently lose acknowledged writes.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

import orjson

from replica.crdt.malformed import Malformed
from replica.crdt.mv_register import MVRegister
from replica.crdt.registry import BY_NAME, BY_TAG, MV, NAMES
from replica.durable.errors import DamagedRecord, StorageError

KEYSPACES = NAMES
"""Every type's keyspace, in the registry's order: LMDB has a database for each."""
TYPE_TAGS = {name: BY_NAME[name].tag for name in NAMES}
BATCH_TAG = 0x10
RECORD_VERSION = 1
"""The version of log records."""
VALUE_VERSION = 2
"""The version of LMDB values: tag, version, JSON, CRC-32."""
CRC_RESIDUE = 0x2144DF1C
"""`zlib.crc32` of any bytes followed by their own CRC-32, little-endian."""
HEADERS = {name: bytes((tag, VALUE_VERSION)) for name, tag in TYPE_TAGS.items()}
BATCH_HEADER = bytes((BATCH_TAG, RECORD_VERSION))

Entry = tuple[str, str, Any]
"""(keyspace, key, stored form): a key's state as a log record carries it, None when gone."""

_MV_NAME, _MV_TAG = MV.name, MV.tag


# -- LMDB values ---------------------------------------------------------------------------


def encode_stored(keyspace: str, key: str, stored: Any) -> bytes:
    """The LMDB value of a state in its stored form, as a log record holds it."""
    value = HEADERS[keyspace] + orjson.dumps([key, stored])
    return value + zlib.crc32(value).to_bytes(4, "little")


def decode_state(keyspace: str, data: bytes) -> tuple[str, Any]:
    """(key, state) of an LMDB value; StorageError when it is not one of ours.

    The tag, version and checksum are checked, and the state's shape and
    types, but its invariants are trusted (`DataType.from_stored`): only
    states this node had normalised are ever stored.
    """
    if len(data) < 2 or data[0] != TYPE_TAGS[keyspace]:
        raise StorageError(f"a {keyspace} record has the wrong type tag")
    if data[1] != VALUE_VERSION:
        raise StorageError(f"a {keyspace} record has unknown format version {data[1]}")
    if zlib.crc32(data) != CRC_RESIDUE:
        raise DamagedRecord(f"a {keyspace} record fails its checksum")
    key, stored = _key_and_stored(keyspace, data[2:-4])
    return key, state_of(keyspace, key, stored)


def _key_and_stored(keyspace: str, body: bytes) -> tuple[str, Any]:
    try:
        key, stored = orjson.loads(body)
    except (orjson.JSONDecodeError, ValueError, TypeError):
        raise StorageError(f"a {keyspace} record is not valid JSON [key, state]") from None
    if not isinstance(key, str):
        raise StorageError(f"a {keyspace} record's key is not a string")
    return key, stored


def state_of(keyspace: str, key: str, stored: Any) -> Any:
    """The state a stored form decodes to; StorageError when it does not."""
    try:
        return BY_NAME[keyspace].from_stored(stored)
    except (Malformed, KeyError, TypeError, ValueError) as exc:
        raise StorageError(f"{keyspace} key {key!r} has an undecodable state: {exc}") from None


def db_key_of(raw: bytes, max_key: int) -> bytes:
    """The LMDB key of a key's UTF-8: itself, or its hash when LMDB would refuse its length."""
    if len(raw) <= max_key:
        return raw
    # 0xff never occurs in UTF-8, so hashed keys cannot collide with plain ones
    return b"\xff" + hashlib.blake2b(raw, digest_size=32).digest()


# -- log records ---------------------------------------------------------------------------


def encode_commit(changes: dict[tuple[str, str], Any]) -> bytes:
    """The log record of `{(keyspace, key): state or None}`, the states a commit carries.

    Every commit of the node comes through here, on its event loop, so the
    entries are built in one pass, and an MV sibling's stored form is a tuple
    of its four fields, which JSON writes as `MVRegister.to_stored` does.
    """
    tags, mv_name, mv_tag = TYPE_TAGS, _MV_NAME, _MV_TAG
    entries: list[tuple[int, str, Any]] = []
    add = entries.append
    for (keyspace, key), state in changes.items():
        if state is None:
            add((tags[keyspace], key, None))
            continue
        if keyspace == mv_name:
            register: MVRegister = state
            if not register.deleted:
                siblings = register.siblings
                if len(siblings) == 1:
                    s = siblings[0]
                    add((mv_tag, key, ((s.value, s.node, s.counter, s.past),)))
                else:
                    add((mv_tag, key, [(s.value, s.node, s.counter, s.past) for s in siblings]))
                continue
        add((tags[keyspace], key, state.to_stored()))
    return BATCH_HEADER + orjson.dumps(entries)


def log_entries(payload: bytes) -> list[Entry]:
    """(keyspace, key, stored form or None) of every key a log record carries, in order."""
    if len(payload) < 3 or payload[0] != BATCH_TAG:
        raise StorageError("a log record is not a batch")
    if payload[1] != RECORD_VERSION:
        raise StorageError("a log record is of an unknown format version")
    try:
        raw = orjson.loads(payload[2:])
    except orjson.JSONDecodeError:
        raise StorageError("a log batch is not valid JSON") from None
    if type(raw) is not list:
        raise StorageError("a log batch must be an array of [tag, key, state]")
    entries: list[Entry] = []
    add, by_tag = entries.append, BY_TAG
    for entry in raw:
        if type(entry) is not list or len(entry) != 3:
            raise StorageError("a log batch entry must be [tag, key, state]")
        tag, key, stored = entry
        known = by_tag.get(tag) if type(tag) is int else None
        if known is None or type(key) is not str:
            raise StorageError(f"a log batch entry has a bad tag or key: {tag!r}, {key!r}")
        add((known.name, key, stored))
    return entries
