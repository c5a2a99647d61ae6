"""What `replica serve --salvage` does to a damaged LMDB data file: never done by default.

Values that fail their checksum or do not decode are removed, after a copy
of the file is set aside; a file LMDB cannot read whole is moved aside, and
the store copies what could be read into a new one.  Each step logs an ERROR
saying what it removed or moved, and the start is taken as one after a crash
(`replica.durable.incarnation`).
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from replica.durable.data_dir import set_aside_name
from replica.durable.errors import StorageError
from replica.durable.lmdb_file import lmdb_failure
from replica.durable.records import decode_state

log = logging.getLogger("replica.durable.salvage")

DATA_FILE = "data.mdb"


def remove_damaged_values(
    env: Any, dbs: dict[str, Any], path: Path, *, keep_copy: bool = True
) -> dict[str, Any]:
    """Remove every value that cannot be loaded, after copying the file aside; what was done."""
    import lmdb

    damaged: list[tuple[str, bytes, str]] = []
    try:
        with env.begin() as txn:
            for keyspace, db in dbs.items():
                for db_key, data in txn.cursor(db=db).iternext():
                    try:
                        decode_state(keyspace, data)
                    except StorageError as exc:
                        damaged.append((keyspace, db_key, str(exc)))
    except lmdb.Error as exc:
        raise lmdb_failure(path / DATA_FILE, exc) from None
    if not damaged:
        log.warning("salvage: every value in %s passes its checksum", path / DATA_FILE)
        return {}
    aside = set_aside(path, rename=False) if keep_copy else None
    with env.begin(write=True) as txn:
        for keyspace, db_key, _ in damaged:
            txn.delete(db_key, db=dbs[keyspace])
    shown = ", ".join(f"{keyspace} {db_key[:60]!r}" for keyspace, db_key, _ in damaged[:10])
    log.error(
        "salvage: removed %d damaged values from %s (the first: %s; %s)%s",
        len(damaged),
        path / DATA_FILE,
        damaged[0][2],
        shown,
        f", a copy kept as {aside}" if aside else "",
    )
    return {"values_removed": len(damaged), **({"set_aside": aside.name} if aside else {})}


def set_aside(path: Path, *, rename: bool) -> Path:
    """Move (or copy) the data file to a name `check_dir` accepts, and return that path."""
    source = path / DATA_FILE
    stamp = int(time.time())
    while (aside := path / set_aside_name(stamp)).exists():
        stamp += 1
    try:
        if rename:
            source.rename(aside)
        else:
            shutil.copyfile(source, aside)
    except OSError as exc:
        raise StorageError(f"cannot set {source} aside: {exc.strerror or exc}") from None
    return aside
