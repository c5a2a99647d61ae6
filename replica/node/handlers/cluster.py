"""Handlers of the node itself: `init`, `status`, `auth`, the peer handshake, repair, replies.

Peers' answers to the messages this node sent (`<type>_merge_ok`, `ae_roots_ok`,
`ae_keys_ok`, `quorum_read_ok`, `tombstone_*_ok`, and `error`) are routed here
like any request, by type, and handed to the replicator; they are never
answered.  They, anti-entropy, quorum reads and tombstone confirmations are
`PEER_HANDLERS`: only a proven peer may send them.
"""

from __future__ import annotations

import hmac

from replica import build
from replica.crdt.malformed import Malformed, require_list, require_str
from replica.crdt.registry import TYPES
from replica.errors import ErrorCode, RequestError
from replica.node.context import Body, Context, Handler
from replica.node.handlers.quorum_read import quorum_read
from replica.node.handlers.tombstones import HANDLERS as TOMBSTONE_HANDLERS
from replica.replication import peer_handshake
from replica.replication.quorum import READ_ANSWER, READ_REQUEST
from replica.replication.replicator import Replicator

WRONG_PASSWORD = "wrong password"
NO_PASSWORD = (
    "auth sent, but this node has no client password ([cluster] password_file): "
    "every client may send requests without one"
)


def init(ctx: Context, body: Body, src: str | None) -> Body:
    node_id = require_str(body, "node_id")
    node_ids = require_list(body.get("node_ids"), "field 'node_ids'")
    if not all(isinstance(n, str) for n in node_ids):
        raise Malformed("field 'node_ids' must be an array of strings")
    if ctx.node_id is None:
        ctx.bind(node_id, node_ids)
    elif node_id != ctx.node_id:
        raise RequestError(
            ErrorCode.PRECONDITION_FAILED, f"this node is {ctx.node_id!r}, not {node_id!r}"
        )
    return {"type": "init_ok"}


def peer_hello(ctx: Context, body: Body, src: str | None) -> Body:
    """A dialling peer's hello: only when both nodes list the same cluster, a challenge or `_ok`."""
    return peer_handshake.answer_hello(
        _me(ctx), ctx.node_ids, ctx.cluster_secret, ctx.session, body
    )


def peer_proof(ctx: Context, body: Body, src: str | None) -> Body:
    """The dialler's answer to our challenge: `peer_hello_ok` when it proves the secret."""
    return peer_handshake.answer_proof(_me(ctx), ctx.cluster_secret, ctx.session, body)


def auth(ctx: Context, body: Body, src: str | None) -> Body:
    """The client password (Redis's AUTH): `auth_ok`, and the connection may send requests.

    A wrong one is error 1000, counted in `status`, and leaves the connection
    as it was; compared in constant time, so its timing tells nothing.
    """
    password = require_str(body, "password")
    expected = ctx.client_password
    if expected is None:
        raise RequestError(ErrorCode.PRECONDITION_FAILED, NO_PASSWORD)
    if not hmac.compare_digest(password.encode(), expected):
        ctx.refusals.auth_failures += 1
        raise RequestError(ErrorCode.NOT_AUTHORISED, WRONG_PASSWORD)
    ctx.session.authenticated = True
    return {"type": "auth_ok"}


def _me(ctx: Context) -> str:
    if ctx.node_id is None:  # not reached: the node answers nothing before `init`
        raise RequestError(ErrorCode.TEMPORARILY_UNAVAILABLE, "node not initialised")
    return ctx.node_id


def ae_roots(ctx: Context, body: Body, src: str | None) -> Body:
    return _replicator(ctx).answer_roots(body)


def ae_keys(ctx: Context, body: Body, src: str | None) -> Body:
    return _replicator(ctx).answer_keys(src, body)


def peer_reply(ctx: Context, body: Body, src: str | None) -> None:
    """A peer's answer to a message of ours: acknowledgements and anti-entropy answers."""
    if "in_reply_to" not in body:
        raise RequestError(
            ErrorCode.NOT_SUPPORTED, f"{body['type']!r} is a reply and needs 'in_reply_to'"
        )
    if ctx.replicator is not None:
        ctx.replicator.on_reply(src, body)


def _replicator(ctx: Context) -> Replicator:
    if ctx.replicator is None:
        raise RequestError(ErrorCode.NOT_SUPPORTED, "this node has no peers to repair with")
    return ctx.replicator


def status(ctx: Context, body: Body, src: str | None) -> Body:
    """With `"digests": true`, also each keyspace's anti-entropy root: agreement, seen."""
    keyspaces, replicator = ctx.keyspaces, ctx.replicator
    reply: Body = {
        "type": "status_ok",
        "node_id": ctx.node_id,
        "peers": [] if replicator is None else replicator.status(),
        "keys": {t.name: len(keyspaces.states[t.name]) for t in TYPES},
        "max_siblings": {t.name: keyspaces.max_siblings(t.name) for t in TYPES if t.has_siblings},
        "tombstones": keyspaces.tombstones(),
        "tombstones_collected": dict(keyspaces.collected),
        "gossip_bytes_sent": 0 if replicator is None else replicator.bytes_sent,
        "actor": keyspaces.actor,
        "build": build.BUILD,
        "durability": ctx.durable_status(),
        "auth_failures": ctx.refusals.auth_failures,
        "connections_refused": ctx.refusals.connections,
        "partial_lines_closed": ctx.refusals.partial_lines,
        "tls_handshakes_failed": ctx.refusals.tls_handshakes,
        "sibling_warnings": keyspaces.sibling_watch.sibling_warnings,
        "merges_over_max_siblings": keyspaces.sibling_watch.merges_over_max_siblings,
        "quorums": None if replicator is None else replicator.quorums.status(),
    }
    if body.get("digests") is True and replicator is not None:
        roots = replicator.anti_entropy.roots()
        reply["digests"] = {name: f"{root:016x}" for name, root in roots.items()}
    return reply


PEER_HANDLERS: dict[str, Handler] = {
    "ae_roots": ae_roots,
    "ae_keys": ae_keys,
    **{f"{t.merge_type}_ok": peer_reply for t in TYPES},
    "ae_roots_ok": peer_reply,
    "ae_keys_ok": peer_reply,
    READ_REQUEST: quorum_read,
    READ_ANSWER: peer_reply,
    **TOMBSTONE_HANDLERS,
    **{f"{msg_type}_ok": peer_reply for msg_type in TOMBSTONE_HANDLERS},
    "error": peer_reply,
}
"""The messages only a proven peer may send: anti-entropy, quorum reads, and every answer to
our messages."""

HANDSHAKE_HANDLERS: dict[str, Handler] = {
    peer_handshake.HELLO: peer_hello,
    peer_handshake.PROOF: peer_proof,
}
"""The peer handshake: open to any connection, a password set or not."""

HANDLERS: dict[str, Handler] = {
    "init": init,
    "status": status,
    "auth": auth,
    **HANDSHAKE_HANDLERS,
    **PEER_HANDLERS,
}
