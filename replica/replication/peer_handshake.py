"""The peer handshake: a connection becomes a peer link only once membership is agreed.

The dialling node speaks first, in the envelope form:
`peer_hello {node_id, node_ids}`.  The accepting node answers
`peer_hello_ok` when `node_id` is one of its peers and `node_ids` is its own
node list, in the same order (client-clocked KV clocks index that list by
position, so two nodes that order it differently would read each other's
clocks wrongly); otherwise error 22 naming the difference, and it closes the
connection.  Either side logs a refusal once per distinct reason: the dialler
keeps redialling with backoff, and a misconfigured node should not fill the
log twice a second.

Once accepted, a connection reads lines up to `PEER_MAX_LINE_BYTES` rather
than the clients' `max_line_bytes`: a gossip line carries whole states, and
any state a client could write must be able to replicate.

A proof of membership (a challenge-response over nonces) slots in between the
hello and its `_ok`: the acceptor answers the hello with a challenge, and only
the final `_ok` makes the connection a peer's, which is what `accepted` reports
to the transport.  Stdio (Maelstrom) nodes need no handshake: their network
is the harness's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from replica.crdt.malformed import Malformed, require_list, require_str
from replica.errors import ErrorCode, RequestError

log = logging.getLogger("replica.peers")

HELLO = "peer_hello"
HELLO_OK = "peer_hello_ok"
HELLO_MARK = b'"peer_hello"'  # a line that may hold a hello, before it is parsed
PEER_MAX_LINE_BYTES = 64 << 20  # the bound on an inflated compressed batch, too
HANDSHAKE_TIMEOUT_S = 5.0
MAX_REMEMBERED_REASONS = 256


def hello(node_id: str, node_ids: Sequence[str]) -> dict[str, Any]:
    """The dialler's first message body."""
    return {"type": HELLO, "node_id": node_id, "node_ids": list(node_ids)}


def refusal(node_id: str | None, node_ids: Sequence[str], body: dict[str, Any]) -> str | None:
    """Why a hello is refused by the node `node_id` of `node_ids`, or None to accept it."""
    peer = require_str(body, "node_id")
    theirs = require_list(body.get("node_ids"), "field 'node_ids'")
    if not all(isinstance(n, str) for n in theirs):
        raise Malformed("field 'node_ids' must be an array of strings")
    if peer == node_id or peer not in node_ids:
        return f"{peer!r} is not a peer of {node_id!r}, whose nodes are {list(node_ids)}"
    if theirs != list(node_ids):
        return (
            f"node lists differ: {node_id!r} has {list(node_ids)}, {peer!r} has {theirs} "
            "(the same nodes in the same order are required)"
        )
    return None


def answer(node_id: str | None, node_ids: Sequence[str], body: dict[str, Any]) -> dict[str, Any]:
    """The acceptor's reply to a hello; error 22 (logged once per reason) when refused."""
    reason = refusal(node_id, node_ids, body)
    if reason is not None:
        _refusals.note(f"refused peer {body.get('node_id')!r} at connect: {reason}")
        raise RequestError(ErrorCode.PRECONDITION_FAILED, reason)
    return {"type": HELLO_OK}


def accepted(line: bytes, reply: bytes) -> bool | None:
    """For a transport: True if `line` was a hello that `reply` accepts, False if refused.

    None when the line was no hello.  Called only for lines holding `HELLO_MARK`
    on connections not yet accepted, so its parsing costs nothing otherwise.
    """
    try:
        message = orjson.loads(line)
        answer = orjson.loads(reply)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or not isinstance(answer, dict):
        return None
    body = message.get("body", message)
    if not isinstance(body, dict) or body.get("type") != HELLO:
        return None
    reply_body = answer.get("body", answer)
    return isinstance(reply_body, dict) and reply_body.get("type") == HELLO_OK


class ReasonLog:
    """Logs each distinct reason once (a bounded memory of them), then stays quiet."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def note(self, text: str) -> None:
        if text in self._seen:
            return
        if len(self._seen) >= MAX_REMEMBERED_REASONS:
            self._seen.clear()
        self._seen.add(text)
        log.warning("%s", text)

    def forget(self) -> None:
        """After a success, the next refusal is news again."""
        self._seen.clear()


_refusals = ReasonLog()
