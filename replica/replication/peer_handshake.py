"""The peer handshake: a connection becomes a peer link only once membership is proven.

The dialling node speaks first, in the envelope form:
`peer_hello {node_id, node_ids}`.  The accepting node checks that `node_id`
is one of its peers and `node_ids` is its own node list, in the same order
(client-clocked KV clocks index that list by position, so two nodes that
order it differently would read each other's clocks wrongly); otherwise
error 22 naming the difference, and it closes the connection.

Without a cluster secret the acceptor then answers `peer_hello_ok`: any
connection that says hello becomes a peer's (a loopback development cluster,
where netcat may explore merges).  Over TLS (`Session.certified`) the
dialler's client certificate must name the node id it says hello as, or the
hello is refused with error 1000; that certificate is the proof, and with a
secret as well the challenge below is still required (both, not either).
With a secret both sides prove they hold it, never sending it:

    dialler  -> peer_hello     {node_id, node_ids, nonce: Nd}
    acceptor -> peer_challenge {node_id, nonce: Na, proof: P(acceptor)}
    dialler  -> peer_proof     {proof: P(dialler)}     (once P(acceptor) verified)
    acceptor -> peer_hello_ok

where P(role) = HMAC-SHA256(secret, tag | role | dialler id | acceptor id | Nd | Na),
each field length-prefixed, and both nonces are 32 fresh random bytes (hex on
the wire).  Binding both ids and both nonces makes a proof good for one
connection between two named nodes in one direction only: replayed on another
connection, reflected back, or claimed for another node, it fails.  A hello
with a nonce at a node without a secret, or without one at a node with a
secret, is refused with error 1000: a secret on one side only exchanges
nothing.  Every refusal closes the connection; each side logs it once per
distinct reason (`ReasonLog`): the dialler keeps redialling with backoff, and
a misconfigured node should not fill the log twice a second.

This module holds the pure parts (messages, proofs, verdicts); the transports
keep each connection's `Session`, where the acceptor's pending challenge lives.
Once accepted, a connection reads lines up to `PEER_MAX_LINE_BYTES` rather
than the clients' `max_line_bytes`: a gossip line carries whole states, and
any state a client could write must be able to replicate.  Stdio (Maelstrom)
nodes need no handshake: their network is the harness's.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import ssl
from collections.abc import Sequence
from typing import Any, NoReturn

from replica.crdt.malformed import Malformed, require_list, require_str
from replica.errors import ErrorCode, RequestError
from replica.session import Challenge, Session

log = logging.getLogger("replica.peers")

HELLO = "peer_hello"
HELLO_OK = "peer_hello_ok"
CHALLENGE = "peer_challenge"
PROOF = "peer_proof"
PEER_MAX_LINE_BYTES = 64 << 20  # the bound on an inflated compressed batch, too
HANDSHAKE_TIMEOUT_S = 5.0
MAX_REMEMBERED_REASONS = 256
NONCE_BYTES = 32
DOMAIN = b"replica peer handshake v1"
DIALLER = b"dialler"
ACCEPTOR = b"acceptor"


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def proof(
    secret: bytes,
    role: bytes,
    dialler: str,
    acceptor: str,
    dialler_nonce: bytes,
    acceptor_nonce: bytes,
) -> bytes:
    """What the side playing `role` sends to prove it holds `secret` on this connection."""
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (DOMAIN, role, dialler.encode(), acceptor.encode(), dialler_nonce, acceptor_nonce):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return mac.digest()


def verify(expected: bytes, given: bytes) -> bool:
    """Compare two proofs in constant time."""
    return hmac.compare_digest(expected, given)


def hello(node_id: str, node_ids: Sequence[str], nonce: bytes | None) -> dict[str, Any]:
    """The dialler's first message body; `nonce` only when it holds a secret."""
    body: dict[str, Any] = {"type": HELLO, "node_id": node_id, "node_ids": list(node_ids)}
    if nonce is not None:
        body["nonce"] = nonce.hex()
    return body


def refusal(node_id: str | None, node_ids: Sequence[str], body: dict[str, Any]) -> str | None:
    """Why a hello is refused by the node `node_id` of `node_ids`, or None to go on."""
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


def answer_hello(
    node_id: str, node_ids: Sequence[str], secret: bytes | None, session: Session, body: Any
) -> dict[str, Any]:
    """The acceptor's reply to a hello: `peer_hello_ok`, a challenge, or a refusal.

    A refusal is logged once per reason, marks the session refused (its
    transport closes it) and raises error 22 (membership) or 1000 (the secret).
    """
    reason = refusal(node_id, node_ids, body)
    peer = body["node_id"]
    if reason is not None:
        _refuse(
            session,
            ErrorCode.PRECONDITION_FAILED,
            f"refused peer {peer!r} at connect: {reason}",
            reason,
        )
    certified = session.certified
    if certified is not None and peer not in certified:
        why = (
            f"the TLS client certificate names {sorted(certified)}, not {peer!r}"
            if certified
            else f"no TLS client certificate of a member proves {peer!r}"
        )
        _refuse(session, ErrorCode.NOT_AUTHORISED, f"refused peer {peer!r}: {why}", why)
    nonce = _nonce(body, "nonce")
    if secret is None and nonce is not None:
        why = (
            f"{peer!r} asks for proof of a cluster secret and {node_id!r} has none "
            "(secret_file set on one side only?)"
        )
        _refuse(session, ErrorCode.NOT_AUTHORISED, f"refused peer {peer!r}: {why}", why)
    if secret is None:
        session.peer = peer
        session.news = True
        return {"type": HELLO_OK}
    if nonce is None:
        why = (
            f"{node_id!r} requires the cluster secret and {peer!r} offers no proof of it "
            "(no secret_file on it?)"
        )
        _refuse(session, ErrorCode.NOT_AUTHORISED, f"refused peer {peer!r}: {why}", why)
    mine = new_nonce()
    session.challenge = Challenge(peer, nonce, mine)
    session.news = True
    return {
        "type": CHALLENGE,
        "node_id": node_id,
        "nonce": mine.hex(),
        "proof": proof(secret, ACCEPTOR, peer, node_id, nonce, mine).hex(),
    }


def answer_proof(node_id: str, secret: bytes | None, session: Session, body: Any) -> dict[str, Any]:
    """The acceptor checks the dialler's proof: `peer_hello_ok`, or error 1000 and a close."""
    pending = session.challenge
    if pending is None or secret is None:
        why = "no challenge is pending on this connection (send peer_hello first)"
        _refuse(session, ErrorCode.NOT_AUTHORISED, f"refused a peer_proof: {why}", why)
    session.challenge = None
    given = _nonce(body, "proof")
    expected = proof(
        secret, DIALLER, pending.dialler, node_id, pending.dialler_nonce, pending.acceptor_nonce
    )
    if given is None or not verify(expected, given):
        why = (
            f"the proof of {pending.dialler!r} does not match the cluster secret of "
            f"{node_id!r} (another secret, or a proof replayed from another connection)"
        )
        _refuse(session, ErrorCode.NOT_AUTHORISED, f"refused peer {pending.dialler!r}: {why}", why)
    session.peer = pending.dialler
    session.news = True
    return {"type": HELLO_OK}


def check_challenge(
    secret: bytes, me: str, peer: str, my_nonce: bytes, body: dict[str, Any]
) -> tuple[bytes | None, str | None]:
    """The dialler checks a challenge from `peer`: (its own proof, None) or (None, why not)."""
    if body.get("node_id") != peer:
        return None, f"peer {peer} answered as {body.get('node_id')!r}"
    try:
        nonce = _nonce(body, "nonce")
        given = _nonce(body, "proof")
    except Malformed as exc:
        return None, f"peer {peer} sent a malformed challenge: {exc}"
    if nonce is None or given is None:
        return None, f"peer {peer} sent a challenge without a nonce or a proof"
    if not verify(proof(secret, ACCEPTOR, me, peer, my_nonce, nonce), given):
        return None, (
            f"peer {peer} failed to prove the cluster secret: its proof does not match "
            "this node's secret (another secret?)"
        )
    return proof(secret, DIALLER, me, peer, my_nonce, nonce), None


def abandoned(session: Session, why: str) -> None:
    """The acceptor's connection ended with a challenge unanswered: log it once."""
    pending = session.challenge
    if pending is None:
        return
    session.challenge = None
    _refusals.note(f"refused peer {pending.dialler!r}: {why}")


def _refuse(session: Session, code: ErrorCode, logged: str, why: str) -> NoReturn:
    session.refused = why
    session.news = True
    _refusals.note(logged)
    raise RequestError(code, why)


def _nonce(body: dict[str, Any], name: str) -> bytes | None:
    """A field of 32 bytes in hex, or None when absent; Malformed otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 * NONCE_BYTES:
        raise Malformed(f"field {name!r} must be {2 * NONCE_BYTES} hex digits")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise Malformed(f"field {name!r} must be {2 * NONCE_BYTES} hex digits") from None


_HINTS = {
    "WRONG_VERSION_NUMBER": "not TLS: a plaintext client?",
    "HTTP_REQUEST": "an HTTP request, not TLS",
    "TLSV1_ALERT_UNKNOWN_CA": "the other side does not trust the CA of this side's certificate",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the other side refused this side's certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the other side refused this side's certificate",
    "UNSUPPORTED_PROTOCOL": "the other side offers nothing at or above TLS 1.2",
}


def tls_failure_reason(exc: ssl.SSLError) -> str:
    """What failed: the verification message (another CA, another name) or the alert."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    reason = exc.reason or str(exc)
    hint = _HINTS.get(reason)
    return reason if hint is None else f"{reason} ({hint})"


class ReasonLog:
    """Logs each distinct reason once (a bounded memory of them), then stays quiet."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._seen: set[str] = set()
        self._log = logger

    def note(self, text: str) -> None:
        if text in self._seen:
            return
        if len(self._seen) >= MAX_REMEMBERED_REASONS:
            self._seen.clear()
        self._seen.add(text)
        self._log.warning("%s", text)

    def forget(self) -> None:
        """After a success, the next refusal is news again."""
        self._seen.clear()


_refusals = ReasonLog()
