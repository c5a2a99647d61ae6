"""The node: one replica's identity, message routing and error replies.

Data flows one way: a transport hands `handle_line` one request line, the node
decodes it, routes the body by its `type` to a handler in `HANDLERS`, and hands
back the encoded reply.  The node owns the only outgoing `msg_id` counter, so
every message it sends, replies and peer messages alike, is numbered from 0.

Every line comes with its connection's `Session`: a peer-only message
(`handlers.PEER_ONLY`) on a connection that has not proven cluster membership
gets error 1000 and changes nothing, and a proven peer speaks only for the
node it proved.  With a client password (`NodeSettings.password`) every
request but `auth` and the peer handshake gets error 1000 too until the
connection has sent it, as Redis's `requirepass` does; proven peers and
trusted inputs need none.

A request that writes or reads one key runs under its `w` or `r`
(`replica.node.quorums`); above 1 its reply is deferred until the quorum is
known, and the transport holds it in order.

A request never escapes as an exception: bad input becomes error 12, a refusal
the contract defines becomes its code, and anything unexpected is logged with
its traceback and answered with error 13 while the node keeps serving.

An integer outside what the encoder writes back, [-2**63, 2**64 - 1], is
error 12 at the door: the decoder reads it as an inexact float.  Fields that
must be integers refuse floats anyway; a value holding a float with no
fraction of magnitude 2**63 or more is `Suspect`, and only then is the line
parsed a second time, by `json`, to tell such an integer from a real float.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from replica.crdt.malformed import Malformed, Suspect
from replica.crdt.registry import BY_MERGE_TYPE
from replica.durable.durability import Durability
from replica.errors import ErrorCode, RequestError
from replica.framing import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_PARTIAL_LINE_TIMEOUT_MS,
)
from replica.keyspaces import (
    DEFAULT_MAX_CLOCK_SKEW_MS,
    DEFAULT_MVCC_RETENTION_MS,
    Keyspaces,
    wall_clock_ms,
)
from replica.limits import (
    DEFAULT_MAX_SIBLINGS,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_SIBLING_WARN,
    Limits,
)
from replica.node.context import Body, Context, Handler, Refusals
from replica.node.handlers import BEFORE_AUTH, HANDLERS, PEER_ONLY
from replica.node.handlers.cluster import init
from replica.node.handlers.merging import without_writes_of
from replica.node.quorums import Deferred, coordinate
from replica.replication.quorum import DEFAULT_REQUEST_TIMEOUT_MS
from replica.replication.replicator import Replicator
from replica.session import Session

log = logging.getLogger("replica.node.router")

LINE: Final = orjson.OPT_APPEND_NEWLINE  # every encoded message is one line
# Bound once: a compiled module reads a Final name directly, not through orjson's attributes.
_loads: Final = orjson.loads
_dumps: Final = orjson.dumps
MIN_INTEGER = -(1 << 63)  # the range of integers the encoder writes back: i64 and u64
MAX_INTEGER = (1 << 64) - 1
AUTH_REQUIRED = (
    'authentication required: send {"type": "auth", "password": "..."} first '
    "(this node has [cluster] password_file)"
)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """What a node needs beyond its identity; the shell fills it from config or flags."""

    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    mvcc_retention_ms: int = DEFAULT_MVCC_RETENTION_MS
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    clock_offset_ms: int = 0
    """Added to every wall clock reading of the hybrid clock: a skewed clock for fault tests."""
    drop_merges_from: str | None = None
    """A peer whose writes this node acknowledges and loses, on purpose: for testing checkers."""
    secret: bytes | None = field(default=None, repr=False)
    """The cluster secret peers prove they hold (`peer_handshake`); None: no proof asked."""
    password: bytes | None = field(default=None, repr=False)
    """The password clients send (`auth`) before any other request; None: none is asked."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections per listening port; one more gets an error line and is closed."""
    partial_line_timeout_ms: int = DEFAULT_PARTIAL_LINE_TIMEOUT_MS
    """How long a connection may hold an unfinished line before it is closed."""
    sibling_warn: int = DEFAULT_SIBLING_WARN
    """A key reaching this many siblings is logged and counted (`replica.limits`)."""
    max_siblings: int = DEFAULT_MAX_SIBLINGS
    """A client write that would add a sibling past this many is refused (error 22)."""
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    """A client write whose value encodes to more JSON than this is refused (error 12)."""
    w: int | str = 1
    """How many nodes hold a write before it is answered, when the request names none."""
    r: int | str = 1
    """How many nodes' states a read merges, when the request names none."""
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    """How long a write waits for `w` nodes, or a read for `r`, before error 0."""


class Node(Context):
    """One replica.  Bound to an identity by `cluster.toml` or, in stdio mode, by `init`."""

    def __init__(
        self,
        node_id: str | None = None,
        node_ids: Sequence[str] = (),
        settings: NodeSettings | None = None,
        *,
        actor: str | None = None,
    ) -> None:
        """`actor` names this node's MV dots; it defaults to the node id (a node in memory)."""
        self.node_id = node_id
        self.node_ids = list(node_ids)
        self.settings = settings or NodeSettings()
        self.cluster_secret = self.settings.secret
        self.client_password = self.settings.password
        self._quorums_of_one = self.settings.w == 1 and self.settings.r == 1
        """True when a request naming neither `w` nor `r` runs as it always has."""
        self.msg_ids = itertools.count()
        """Numbers every message the node sends, replies and peer messages alike."""
        self.line = b""  # the request line being handled, read again only for a `Suspect` value
        self.integers_checked = False  # while handling it again, that line checked
        self.session = Session()  # that of the request being handled
        self.refusals = Refusals()
        offset = self.settings.clock_offset_ms
        self.keyspaces = Keyspaces(
            node_id or "",
            mvcc_retention_ms=self.settings.mvcc_retention_ms,
            actor=actor,
            max_clock_skew_ms=self.settings.max_clock_skew_ms,
            now_ms=wall_clock_ms if not offset else lambda: wall_clock_ms() + offset,
            limits=Limits(
                self.settings.sibling_warn,
                self.settings.max_siblings,
                self.settings.max_value_bytes,
            ),
        )
        self.replicator = None
        self._durability: Durability | None = None
        if node_id is not None:
            self._start_replication()

    @property
    def initialised(self) -> bool:
        return self.node_id is not None

    def bind(self, node_id: str, node_ids: Sequence[str]) -> None:
        """Take an identity from `init` (stdio mode)."""
        self.node_id = node_id
        self.node_ids = list(node_ids)
        self.keyspaces.node_id = node_id
        if not self.keyspaces.actor:
            self.keyspaces.actor = node_id
        self._start_replication()

    def _start_replication(self) -> None:
        peers = [n for n in self.node_ids if n != self.node_id]
        if peers and self.node_id is not None:
            self.replicator = Replicator(self.node_id, peers, self.keyspaces, self.msg_ids)

    @property
    def durability(self) -> Durability | None:
        """The node's durable storage; None for a node in memory."""
        return self._durability

    @durability.setter
    def durability(self, durability: Durability | None) -> None:
        self._durability = durability
        if self.replicator is not None:
            self.replicator.durability = durability

    def durable_status(self) -> dict[str, Any]:
        durability = self._durability
        return {"mode": "memory"} if durability is None else durability.status()

    @property
    def quorum_defaults(self) -> tuple[int | str, int | str, int]:
        settings = self.settings
        return settings.w, settings.r, settings.request_timeout_ms

    def commit_barrier(self) -> asyncio.Future[None] | None:
        """None when every change so far is durable, or replies are not held for commits."""
        durability = self._durability
        if durability is None or not durability.holds_replies:
            return None
        return durability.barrier()

    def peer_link(self, peer: str, *, opened: bool) -> None:
        """A connection that proved `peer` opened or closed (tombstone confirmations need it)."""
        if self.replicator is not None:
            if opened:
                self.replicator.tombstones.link_opened(peer)
            else:
                self.replicator.tombstones.link_closed(peer)

    def shown(self, keyspace: str, key: str) -> None:
        """A reply is about to show the key's state (see `Durability.note_read`)."""
        if self._durability is not None:
            self._durability.note_read(keyspace, key)

    # -- lines -----------------------------------------------------------------

    def handle_line(
        self, line: bytes, session: Session | None = None
    ) -> bytes | Deferred[bytes | None] | None:
        """Decode one request line, handle it, and encode the reply (None: no reply is due).

        A request under a quorum (`w` or `r` above 1) is answered `Deferred`:
        the encoded reply once the quorum is known.

        `session` is what the line's connection has proven; None: a client that
        proved nothing, on a connection of its own that ends with this line.
        """
        try:
            message = _loads(line)
        except orjson.JSONDecodeError as exc:
            return self.error_line(ErrorCode.MALFORMED_REQUEST, f"not valid JSON: {exc}")
        if type(message) is not dict:
            return self.error_line(ErrorCode.MALFORMED_REQUEST, "a message must be a JSON object")
        self.line = line
        if session is None:
            session = Session()
        if "type" not in message and "body" in message:
            return self._handle_envelope(message, session)
        reply = self.handle_body(message, None, session)
        if type(reply) is dict:
            return _dumps(reply, option=LINE)
        if isinstance(reply, Deferred):
            return reply.then(_encoded)
        return None

    def _handle_envelope(
        self, message: Body, session: Session
    ) -> bytes | Deferred[bytes | None] | None:
        body = message["body"]
        src = message.get("src")
        if not isinstance(body, dict):
            reply: Body | Deferred[Body | None] | None = self._error(
                None, ErrorCode.MALFORMED_REQUEST, "field 'body' must be an object"
            )
        else:
            src_id = src if isinstance(src, str) else None
            reply = self.handle_body(body, src_id, session)
        if reply is None:
            return None
        me = self.node_id if self.node_id is not None else message.get("dest")

        def encoded(reply: Body | None) -> bytes | None:
            if reply is None:
                return None
            return _dumps({"src": me, "dest": src, "body": reply}, option=LINE)

        if isinstance(reply, Deferred):
            return reply.then(encoded)
        return encoded(reply)

    def error_line(self, code: ErrorCode, text: str) -> bytes:
        """An error reply to a line that could not be read as a request (bare form)."""
        return _dumps(self._error(None, code, text), option=LINE)

    def line_too_long(self) -> bytes:
        limit = self.settings.max_line_bytes
        return self.error_line(
            ErrorCode.MALFORMED_REQUEST, f"line longer than max_line_bytes ({limit}); closing"
        )

    # -- bodies ----------------------------------------------------------------

    def handle_body(
        self, body: Body, src: str | None, session: Session | None = None
    ) -> Body | Deferred[Body | None] | None:
        """Route one message body from `src` (None: bare form) to its handler; build the reply.

        A peer-only type (`PEER_ONLY`) is refused with error 1000 unless `session`
        proved membership; a proven peer speaks only for itself, so its `src`
        must be the node it proved (and is that node when absent).  Any other
        type is refused with error 1000 before the client password, when the
        node has one.  Without a password the checks are a set lookup and two
        field reads.
        """
        msg_id = body.get("msg_id")
        if msg_id is not None and type(msg_id) is not int:
            return self._error(
                None, ErrorCode.MALFORMED_REQUEST, "field 'msg_id' must be an integer"
            )
        msg_type = body.get("type")
        if type(msg_type) is not str:
            return self._error(msg_id, ErrorCode.MALFORMED_REQUEST, "field 'type' must be a string")
        handler = HANDLERS.get(msg_type)
        if handler is None:
            return self._error(
                msg_id, ErrorCode.NOT_SUPPORTED, f"unknown message type {msg_type!r}"
            )
        if self.node_id is None and handler is not init:
            return self._error(
                msg_id, ErrorCode.TEMPORARILY_UNAVAILABLE, "node not initialised: send init first"
            )
        if session is None:
            session = Session()
        if msg_type in PEER_ONLY:
            refusal = _peer_refusal(msg_type, src, session)
            if refusal is not None:
                return self._error(msg_id, ErrorCode.NOT_AUTHORISED, refusal)
            if session.peer is not None:
                src = session.peer
        elif (
            self.settings.password is not None
            and not session.admitted
            and msg_type not in BEFORE_AUTH
        ):
            return self._error(msg_id, ErrorCode.NOT_AUTHORISED, AUTH_REQUIRED)
        self.session = session
        lost = self.settings.drop_merges_from
        if lost is not None and msg_type in BY_MERGE_TYPE:
            body = without_writes_of(lost, body, src)
        if self._quorums_of_one and "w" not in body and "r" not in body:
            plain = self.run(handler, body, src)  # as `_numbered`, inline on the common path
            if plain is not None:
                if msg_id is not None:
                    plain["in_reply_to"] = msg_id
                plain["msg_id"] = next(self.msg_ids)
            return plain
        reply = coordinate(self, handler, body, src)
        if isinstance(reply, Deferred):
            return reply.then(lambda reply: self._numbered(reply, msg_id))
        return self._numbered(reply, msg_id)

    def _numbered(self, reply: Body | None, msg_id: int | None) -> Body | None:
        if reply is None:
            return None
        if msg_id is not None:
            reply["in_reply_to"] = msg_id
        reply["msg_id"] = next(self.msg_ids)
        return reply

    def run(self, handler: Handler, body: Body, src: str | None) -> Body | None:
        """One handler on one body: its reply, or the error reply it earned (not numbered).

        What the JSON port routes by type, and what the Redis port's commands
        become, both run here, so a refusal reads the same on either.
        """
        try:
            try:
                return handler(self, body, src)
            except Suspect:
                return self._handle_checked(handler, body, src)
        except Malformed as malformed:
            return _error_body(ErrorCode.MALFORMED_REQUEST, str(malformed))
        except RequestError as refused:
            return _error_body(refused.code, refused.text)
        except Exception as bug:  # a bug: report it, keep serving
            log.exception("handler for %r failed on %r", body.get("type"), body)
            return _error_body(ErrorCode.CRASH, f"internal error: {type(bug).__name__}")

    def _handle_checked(self, handler: Handler, body: Body, src: str | None) -> Body | None:
        """After a `Suspect` value: refuse the line if it holds an integer beyond 64 bits.

        The decoder reads such an integer as a float, so a value holding a
        float that may be one is refused when the line holds one, and handled
        again otherwise: only such rare requests read their line a second time.
        """
        big = _big_integer(self.line)
        if big is not None:
            raise Malformed(
                f"integer {big} is outside the range a node stores exactly: "
                f"{MIN_INTEGER} to {MAX_INTEGER}"
            )
        self.integers_checked = True
        try:
            return handler(self, body, src)
        finally:
            self.integers_checked = False

    def _error(self, msg_id: int | None, code: ErrorCode, text: str) -> Body:
        reply = _error_body(code, text)
        if msg_id is not None:
            reply["in_reply_to"] = msg_id
        reply["msg_id"] = next(self.msg_ids)
        return reply


def _encoded(reply: Body | None) -> bytes | None:
    return None if reply is None else _dumps(reply, option=LINE)


def _peer_refusal(msg_type: str, src: str | None, session: Session) -> str | None:
    """Why a peer-only message may not be handled on `session`; None when it may."""
    if session.trusted:
        return None
    if session.peer is None:
        return (
            f"{msg_type!r} is a peer message and this connection has not proven cluster "
            "membership (a peer_hello handshake, with the cluster secret when one is set)"
        )
    if src is not None and src != session.peer:
        return f"this connection proved peer {session.peer!r} and cannot speak for {src!r}"
    return None


def _error_body(code: ErrorCode, text: str) -> Body:
    return {"type": "error", "code": int(code), "text": text}


class _OutOfRange(Exception):
    def __init__(self, literal: str) -> None:
        super().__init__(literal)
        self.literal = literal


def _checked_int(literal: str) -> int:
    if len(literal) > 21:  # longer than "-9223372036854775808" or "18446744073709551615"
        raise _OutOfRange(literal)
    value = int(literal)
    if not MIN_INTEGER <= value <= MAX_INTEGER:
        raise _OutOfRange(literal)
    return value


def _big_integer(line: bytes) -> str | None:
    """The first integer literal of a valid JSON line outside the range, shortened; else None."""
    try:
        json.loads(line, parse_int=_checked_int)
    except _OutOfRange as exc:
        literal = exc.literal
        return literal if len(literal) <= 40 else f"{literal[:20]}...({len(literal)} digits)"
    except (ValueError, RecursionError):
        return None  # what json cannot read, orjson already did; nesting is checked later
    return None
