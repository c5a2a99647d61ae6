"""The peer side of tombstone collection: `tombstone_ask` and `tombstone_gone`.

`{"type": "tombstone_ask", "keys": {"mv": ["k", ...], ...}}` asks this node to
confirm that it holds the tombstones of those keys: it sends each key it holds
back as gossip, on its own link, and names the ones it dropped recently in a
`tombstone_gone` with the same `keys` shape.  Both are acknowledged with
`<type>_ok`; what they mean is in `replica.replication.tombstones`.
Peer-only: a stranger gets 1000.  Over stdio nothing confirms a tombstone:
a harness's network need not deliver one sender's messages in order.
"""

from __future__ import annotations

from replica.crdt.malformed import Malformed, require_list, require_object
from replica.crdt.registry import TYPES
from replica.node.context import Body, Context, Handler
from replica.replication.delta_tracker import KeyRef
from replica.replication.tombstones import ASK, GONE

_KEYSPACES = frozenset(t.name for t in TYPES if t.only_tombstone is not None)


def tombstone_ask(ctx: Context, body: Body, src: str | None) -> Body:
    keys = _keys(body)
    if ctx.replicator is not None:
        ctx.replicator.tombstones_asked(src, keys)
        ctx.replicator.push_soon()
    return {"type": f"{ASK}_ok"}


def tombstone_gone(ctx: Context, body: Body, src: str | None) -> Body:
    keys = _keys(body)
    if ctx.replicator is not None:
        refs: list[KeyRef] = [(keyspace, key) for keyspace, names in keys.items() for key in names]
        ctx.replicator.tombstones.gone(ctx.session.peer, refs)  # None over stdio: not counted
    return {"type": f"{GONE}_ok"}


def _keys(body: Body) -> dict[str, list[str]]:
    """The `keys` field: keyspace (one with deletes) -> an array of key strings."""
    raw = require_object(body.get("keys"), "field 'keys'")
    for keyspace, names in raw.items():
        if keyspace not in _KEYSPACES:
            raise Malformed(f"field 'keys' names {keyspace!r}, not one of {sorted(_KEYSPACES)}")
        if not all(isinstance(k, str) for k in require_list(names, f"keys of {keyspace!r}")):
            raise Malformed(f"keys of {keyspace!r} must be strings")
    return raw


HANDLERS: dict[str, Handler] = {ASK: tombstone_ask, GONE: tombstone_gone}
