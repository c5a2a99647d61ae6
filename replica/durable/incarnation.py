"""Incarnations: the actor each start of a data dir writes its MV dots as, so no dot repeats.

MV dots carry an actor id, the node id and a random suffix, instead of the
bare node id, and each incarnation of a data dir has one:

- a dot leaves the node, in a reply or to a peer, only once its commit is
  durable (`replica.durable.durability`), so every dot anyone has seen of an
  actor is in its data dir's log or LMDB;
- a clean stop ends with a checkpoint of everything, after which the store
  writes its clean marker; the next start loads every dot the actor issued,
  and counts on above them under the same actor;
- every start clears the marker, synced, before the node serves anything;
  a start that does not find it (kill -9, a crash, a failed last
  checkpoint), or that salvages a damaged data dir, continues under a new
  actor, distinct from every earlier actor of the data dir (their list is
  kept in meta): whatever the lost life issued, and whatever recovery could
  not read, can then never be issued again to a different write.  A wiped
  data dir gets a new actor the same way;
- the actor's dot floor (`Keyspaces.dot_floor`: no counter at or below it is
  issued again, for any key) is stored in the transaction that marks a
  clean stop, and the next start, keeping the actor, keeps the floor.  Any
  other start has a new actor, none of whose counters were ever issued, so
  its floor is 0 and a stored one is deleted.  A clean stop whose floor
  cannot be read is taken as unclean (a new actor) rather than refused: the
  new actor needs no floor, and the data is intact.

A node in memory has no data dir and writes as its node id: nothing outlives it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from replica.durable.errors import StorageError

log = logging.getLogger("replica.durable.incarnation")

CLEAN_STOP_KEY = b"clean"
"""The meta key a clean close sets to b"1": a salvaged start deletes it, as a crash would."""
ACTOR_KEY, ACTORS_KEY = b"actor", b"actors"
"""The meta keys of the actor of this incarnation, and of every actor the data dir has had."""
DOT_FLOOR_KEY = b"dot_floor"
"""The meta key of the dot floor a clean close kept, in ASCII digits."""


class Incarnation(NamedTuple):
    """The actor a start writes its MV dots as, and the dot floor it starts with."""

    actor: str
    dot_floor: int


def new_actor(node_id: str, taken: Iterable[str] = ()) -> str:
    """A fresh actor id for `node_id`, none of `taken`."""
    used = set(taken)
    while True:
        actor = f"{node_id}~{secrets.token_hex(3)}"
        if actor not in used:
            return actor


def begin_incarnation(
    txn: Any, meta: Any, path: Path, node_id: str, *, salvage: bool
) -> Incarnation:
    """This start of `node_id`'s actor and dot floor, the clean marker and floor cleared in `txn`.

    The same as last time after a clean stop, else a new actor, logged at
    WARNING, and floor 0.
    """
    stored = txn.get(ACTOR_KEY, db=meta)
    previous = None if stored is None else bytes(stored).decode(errors="replace")
    if previous is not None and not previous.startswith(f"{node_id}~"):
        raise StorageError(f"data dir {path} belongs to node {previous.split('~')[0]!r}")
    actors = _actor_list(txn.get(ACTORS_KEY, db=meta), previous)
    clean = txn.get(CLEAN_STOP_KEY, db=meta) == b"1" and not salvage
    floor = _stored_floor(txn.get(DOT_FLOOR_KEY, db=meta)) if clean else 0
    if floor is None:
        log.warning("data dir %s: the dot floor of its clean stop is damaged", path)
        clean, floor = False, 0
    actor = previous if previous is not None and clean else new_actor(node_id, actors)
    if actor != previous:
        actors.append(actor)
        if previous is not None:
            log.warning("unclean stop: continuing as actor %s (was %s)", actor, previous)
    txn.put(ACTOR_KEY, actor.encode(), db=meta)
    txn.put(ACTORS_KEY, " ".join(actors).encode(), db=meta)
    txn.put(CLEAN_STOP_KEY, b"0", db=meta)
    txn.delete(DOT_FLOOR_KEY, db=meta)  # the running node holds it now
    return Incarnation(actor, floor)


def mark_clean(txn: Any, meta: Any, dot_floor: int = 0) -> None:
    """The incarnation ended cleanly: every dot it issued is in LMDB, and `dot_floor` is kept."""
    if dot_floor < 0:
        raise ValueError(f"a dot floor is at least 0, not {dot_floor}")
    txn.put(DOT_FLOOR_KEY, str(dot_floor).encode(), db=meta)
    txn.put(CLEAN_STOP_KEY, b"1", db=meta)


def forget_clean_stop(txn: Any, meta: Any) -> None:
    """Start as after a crash (salvage): the next incarnation takes a new actor."""
    txn.delete(CLEAN_STOP_KEY, db=meta)


def _stored_floor(stored: Any) -> int | None:
    """The kept dot floor: 0 if none was kept, None if it is not ASCII digits."""
    if stored is None:
        return 0
    digits = bytes(stored)
    return int(digits) if digits.isdigit() else None


def _actor_list(stored: Any, actor: str | None) -> list[str]:
    """Every actor the data dir has had, as stored."""
    actors = bytes(stored).decode(errors="replace").split() if stored is not None else []
    if actor is not None and actor not in actors:
        actors.append(actor)
    return actors
