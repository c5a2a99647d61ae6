"""The peer side of a quorum read: `quorum_read` asks for one key's state.

`{"type": "quorum_read", "keyspace": "mv", "key": "k"}` from a proven peer is
answered `{"type": "quorum_read_ok", "keyspace", "key", "state"}` with the
key's state as its type's `<type>_merge` carries it, or null for an absent
key.  The answer shows the key's state, so it leaves only once that state is
durable here, as any read's reply does.  Peer-only: a stranger gets 1000.
"""

from __future__ import annotations

from replica.crdt.malformed import Malformed, require_str
from replica.crdt.registry import BY_NAME
from replica.node.context import Body, Context
from replica.replication.quorum import READ_ANSWER


def quorum_read(ctx: Context, body: Body, src: str | None) -> Body:
    keyspace = require_str(body, "keyspace")
    if keyspace not in BY_NAME:
        raise Malformed(f"field 'keyspace' must be one of {', '.join(BY_NAME)}, not {keyspace!r}")
    key = require_str(body, "key")
    ctx.shown(keyspace, key)
    state = ctx.keyspaces.states[keyspace].get(key)
    wire = None if state is None else state.to_wire()
    return {"type": READ_ANSWER, "keyspace": keyspace, "key": key, "state": wire}
