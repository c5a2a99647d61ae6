"""Request handlers: one function per message type, named after it, in its type's module.

A handler validates the body's fields (raising `Malformed` before touching any
state, so a bad request changes nothing), works on the node's keyspaces
through the narrow `Context`, and returns the reply body without
`in_reply_to` and `msg_id`, which the node adds.  `mv_write` is
`handlers.mv.mv_write`; every `<type>_merge` is `handlers.merging`'s, unless
the type's module has its own.  A type's module may also turn Redis commands
into the same requests (`RESP_COMMANDS`), so both ports run the same handlers.
Peer-only types are named once, in `PEER_ONLY`, derived from the type registry.
"""

from __future__ import annotations

from replica.crdt.registry import TYPES
from replica.node.context import Handler
from replica.node.handlers import cluster, counter, kv, lww, merging, mv, mvcc
from replica.node.resp_terms import Command

HANDLERS: dict[str, Handler] = {
    **cluster.HANDLERS,
    **merging.HANDLERS,
    **mv.HANDLERS,
    **kv.HANDLERS,
    **mvcc.HANDLERS,
    **lww.HANDLERS,
    **counter.HANDLERS,
}
"""Every message type the node answers -> its handler."""

PEER_ONLY: frozenset[str] = frozenset(
    [t.merge_type for t in TYPES] + [f"{t.merge_type}_ok" for t in TYPES] + [*cluster.PEER_HANDLERS]
)
"""The message types accepted only on a connection that proved cluster membership (error 1000
elsewhere): every type's merge and its answer, anti-entropy, and every answer to a peer."""

BEFORE_AUTH: frozenset[str] = frozenset(["auth", *cluster.HANDSHAKE_HANDLERS])
"""The message types a connection may send before the client password, when the node has one:
the password itself, and the peer handshake (proven peers need no password)."""

RESP_COMMANDS: dict[bytes, Command] = {
    **mv.RESP_COMMANDS,
    **lww.RESP_COMMANDS,
    **counter.RESP_COMMANDS,
}
"""Redis commands of the data types (upper case) -> how they become requests."""
