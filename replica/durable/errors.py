"""What goes wrong with durable storage, as the node and the command line see it.

Each error's `str()` is one line: `replica serve` prints it and exits with
code 2, since a data dir that cannot be read whole must not start a node
that would look healthy while it serves part of its data.
"""

from __future__ import annotations


class StorageError(Exception):
    """A data dir the node must not start from; `str()` is one line saying why."""


class DamagedStore(StorageError):
    """Stored bytes that changed since they were written: what `--salvage` may set aside."""


class DamagedRecord(DamagedStore):
    """A stored value that fails its checksum."""


class CheckpointFailed(Exception):
    """A checkpoint did not reach LMDB; `str()` says why."""
