"""The store the node sees: everything loaded once at start, then commits made durable.

The node keeps its keys in memory, so a store only has to hand every stored
state over before the node serves, and make each commit durable after.
`LmdbStore` keeps them in the node's data dir; `MemoryStore` is the store of
a node without a data dir, where nothing outlives the process.  Opening a
store (`open_store`) also decides the actor the node writes its MV dots as,
and the dot floor it starts with (`replica.durable.incarnation`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from replica.durable.incarnation import Incarnation
from replica.durable.lmdb_store import LmdbStore
from replica.durable.log_link import Done
from replica.durable.records import decode_state, encode_stored, log_entries

KeyRef = tuple[str, str]
"""(keyspace, key)."""


class Store(Protocol):
    """What the node needs of durable storage."""

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        """Every stored (keyspace, key, state), the state decoded: once, before any commit."""
        ...

    def begin_writes(self) -> None:
        """Loading is over: get ready for commits now, so a store that cannot stops the start."""
        ...

    def submit(self, record: bytes, done: Done) -> None:
        """Make a log record (`records.encode_commit`) durable; `done` gets the result."""
        ...

    def status(self) -> dict[str, Any]:
        """What `status` shows of the store, beyond the commits."""
        ...

    def close(self, *, clean: bool = True, dot_floor: int = 0) -> None:
        """Release the store; `clean` False: the node leaves writes that never became durable.

        `dot_floor` is the actor's (`Keyspaces.dot_floor`): a store that keeps
        the actor for the next start keeps it too.
        """
        ...


class MemoryStore:
    """A store that keeps encoded states in a dict: for nodes without a data dir, and tests."""

    def __init__(self) -> None:
        self.records: dict[KeyRef, bytes] = {}
        self.commits = 0

    def load_all(self) -> Iterator[tuple[str, str, Any]]:
        for (keyspace, _), data in list(self.records.items()):
            key, state = decode_state(keyspace, data)
            yield keyspace, key, state

    def begin_writes(self) -> None:
        pass

    def submit(self, record: bytes, done: Done) -> None:
        self.store_record(record)
        asyncio.get_running_loop().call_soon(done, None)

    def store_record(self, record: bytes) -> None:
        """Apply a log record's entries: the same encoding a durable node logs."""
        for keyspace, key, stored in log_entries(record):
            if stored is None:
                self.records.pop((keyspace, key), None)
            else:
                self.records[(keyspace, key)] = encode_stored(keyspace, key, stored)
        self.commits += 1

    def status(self) -> dict[str, Any]:
        return {}

    def close(self, *, clean: bool = True, dot_floor: int = 0) -> None:
        pass


def open_store(
    data_dir: str | Path | None, node_id: str, *, salvage: bool = False
) -> tuple[Store, Incarnation]:
    """The node's store, and the actor it writes as with its dot floor (`incarnation`).

    Without a data dir the store is in memory, the actor is the node id itself
    and the floor 0.  `salvage` opens a damaged data dir with what can be read
    of it, as a new incarnation.
    """
    if data_dir is None:
        return MemoryStore(), Incarnation(node_id, 0)
    store = LmdbStore(data_dir, salvage=salvage)
    try:
        return store, store.begin_incarnation(node_id)
    except BaseException:
        store.close()
        raise
