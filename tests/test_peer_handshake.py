"""The peer handshake's pure parts and the node's trust check, without sockets.

Proofs bind the secret, the role, both node ids and both nonces: change any
one and the proof fails.  A connection's `Session` decides whether a
peer-only message is handled (error 1000 otherwise), and a proven peer may
speak only for itself.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from replica.crdt.registry import TYPES
from replica.errors import ErrorCode, RequestError
from replica.node.handlers import HANDLERS, PEER_ONLY
from replica.node.router import Node, NodeSettings
from replica.replication import peer_handshake as hs
from replica.session import Session, trusted

SECRET = b"a" * 64
IDS = ["n1", "n2", "n3"]
FORGED = {
    "type": "mv_merge",
    "key": "account",
    "siblings": [{"value": "pwned", "dot": ["evil", 1], "past": {"n1": 1_000_000_000}}],
}

nonces = st.binary(min_size=hs.NONCE_BYTES, max_size=hs.NONCE_BYTES)
ids = st.text(min_size=1, max_size=8)


def args(**changes: Any) -> tuple[Any, ...]:
    fields = {
        "secret": SECRET,
        "role": hs.DIALLER,
        "dialler": "n1",
        "acceptor": "n2",
        "dialler_nonce": b"\1" * 32,
        "acceptor_nonce": b"\2" * 32,
    }
    fields.update(changes)
    return tuple(fields.values())


@pytest.mark.parametrize(
    "change",
    [
        {"secret": b"b" * 64},
        {"role": hs.ACCEPTOR},
        {"dialler": "n3"},
        {"acceptor": "n3"},
        {"dialler": "n2", "acceptor": "n1"},
        {"dialler_nonce": b"\3" * 32},
        {"acceptor_nonce": b"\3" * 32},
        {"dialler_nonce": b"\2" * 32, "acceptor_nonce": b"\1" * 32},
    ],
)
def test_a_proof_changes_with_every_field_it_binds(change: dict[str, Any]) -> None:
    assert not hs.verify(hs.proof(*args()), hs.proof(*args(**change)))
    assert hs.verify(hs.proof(*args()), hs.proof(*args()))


@given(ids, ids, nonces, nonces, nonces)
def test_a_proof_replayed_with_another_nonce_fails(
    dialler: str, acceptor: str, nd: bytes, na: bytes, other: bytes
) -> None:
    good = hs.proof(SECRET, hs.DIALLER, dialler, acceptor, nd, na)
    assert hs.verify(good, hs.proof(SECRET, hs.DIALLER, dialler, acceptor, nd, na))
    if other != na:
        assert not hs.verify(good, hs.proof(SECRET, hs.DIALLER, dialler, acceptor, nd, other))
    if other != nd:
        assert not hs.verify(good, hs.proof(SECRET, hs.DIALLER, dialler, acceptor, other, na))
    # the acceptor's proof is never the dialler's: a proof reflected back fails
    assert not hs.verify(good, hs.proof(SECRET, hs.ACCEPTOR, dialler, acceptor, nd, na))


@given(ids, ids)
def test_ids_are_length_prefixed_so_no_two_pairs_share_a_proof(a: str, b: str) -> None:
    nd, na = b"\1" * 32, b"\2" * 32
    joined = hs.proof(SECRET, hs.DIALLER, a + b, "x", nd, na)
    split = hs.proof(SECRET, hs.DIALLER, a, b + "x", nd, na)
    assert not hs.verify(joined, split)


def handshake(
    dialler_secret: bytes | None, acceptor_secret: bytes | None
) -> tuple[Session, str | None]:
    """Both sides of a handshake n1 -> n2 in memory: the acceptor's session, the dialler's why."""
    session = Session()
    nonce = hs.new_nonce() if dialler_secret is not None else None
    try:
        answer = hs.answer_hello("n2", IDS, acceptor_secret, session, hs.hello("n1", IDS, nonce))
    except RequestError as exc:
        assert exc.code == ErrorCode.NOT_AUTHORISED and session.refused
        return session, exc.text
    if answer["type"] == hs.HELLO_OK:
        return session, None if dialler_secret is None else "accepted without a proof"
    assert dialler_secret is not None and nonce is not None
    mine, why = hs.check_challenge(dialler_secret, "n1", "n2", nonce, answer)
    if mine is None:
        return session, why
    try:
        hs.answer_proof("n2", acceptor_secret, session, {"type": hs.PROOF, "proof": mine.hex()})
    except RequestError as exc:
        return session, exc.text
    return session, None


def test_the_same_secret_on_both_sides_proves_the_dialler() -> None:
    session, why = handshake(SECRET, SECRET)
    assert why is None and session.peer == "n1" and session.challenge is None


def test_no_secret_on_either_side_accepts_any_hello() -> None:
    session, why = handshake(None, None)
    assert why is None and session.peer == "n1"


@pytest.mark.parametrize(
    ("dialler", "acceptor", "expected"),
    [
        (SECRET, b"b" * 64, "failed to prove the cluster secret"),
        (SECRET, None, "asks for proof of a cluster secret and 'n2' has none"),
        (None, SECRET, "'n2' requires the cluster secret and 'n1' offers no proof"),
    ],
)
def test_a_secret_that_differs_or_is_on_one_side_only_proves_nothing(
    dialler: bytes | None, acceptor: bytes | None, expected: str
) -> None:
    session, why = handshake(dialler, acceptor)
    assert why is not None and expected in why
    assert session.peer is None


def test_a_dialler_proof_replayed_on_another_connection_is_refused() -> None:
    first = Session()
    nonce = hs.new_nonce()
    challenge = hs.answer_hello("n2", IDS, SECRET, first, hs.hello("n1", IDS, nonce))
    mine, _ = hs.check_challenge(SECRET, "n1", "n2", nonce, challenge)
    assert mine is not None
    second = Session()
    hs.answer_hello("n2", IDS, SECRET, second, hs.hello("n1", IDS, nonce))  # same nonce, even
    with pytest.raises(RequestError) as refused:
        hs.answer_proof("n2", SECRET, second, {"type": hs.PROOF, "proof": mine.hex()})
    assert refused.value.code == ErrorCode.NOT_AUTHORISED and second.peer is None
    assert second.refused is not None and "replayed" in second.refused


def test_a_proof_without_a_challenge_is_refused() -> None:
    session = Session()
    with pytest.raises(RequestError) as refused:
        hs.answer_proof("n2", SECRET, session, {"type": hs.PROOF, "proof": "00" * 32})
    assert refused.value.code == ErrorCode.NOT_AUTHORISED and session.peer is None


def test_peer_only_types_are_every_merge_its_answer_anti_entropy_and_replies() -> None:
    for t in TYPES:
        assert {t.merge_type, f"{t.merge_type}_ok"} <= PEER_ONLY
    assert {"ae_roots", "ae_keys", "ae_roots_ok", "ae_keys_ok", "error"} <= PEER_ONLY
    assert set(HANDLERS) >= PEER_ONLY
    client_types = {"mv_write", "mv_read", "status", "init", "peer_hello", "peer_proof"}
    assert not client_types & PEER_ONLY


def node() -> Node:
    return Node("n1", IDS)


def call(n: Node, message: dict[str, Any], session: Session | None = None) -> dict[str, Any]:
    reply = n.handle_line(orjson.dumps(message), session)
    assert reply is not None
    decoded: dict[str, Any] = orjson.loads(reply)
    return decoded.get("body", decoded)


@pytest.mark.parametrize(
    "body", [FORGED, {"type": "ae_roots", "roots": {}}, {"type": "mv_merge_ok", "in_reply_to": 1}]
)
def test_a_client_that_proved_nothing_gets_1000_and_changes_nothing(body: dict[str, Any]) -> None:
    n = node()
    reply = call(n, {**body, "msg_id": 7})
    assert reply["type"] == "error" and reply["code"] == 1000, reply
    assert "not proven cluster membership" in reply["text"]
    assert call(n, {"type": "mv_read", "key": "account"})["values"] == []


def test_hello_then_merge_on_one_session_works_without_a_secret() -> None:
    n, session = node(), Session()
    hello = {"src": "n2", "dest": "n1", "body": {**hs.hello("n2", IDS, None), "msg_id": 1}}
    assert call(n, hello, session)["type"] == hs.HELLO_OK
    assert call(n, {**FORGED, "msg_id": 2}, session)["type"] == "mv_merge_ok"
    assert [v["value"] for v in call(n, {"type": "mv_read", "key": "account"})["values"]] == [
        "pwned"
    ]


def test_with_a_secret_a_hello_alone_proves_nothing() -> None:
    n, session = Node("n1", IDS, NodeSettings(secret=SECRET)), Session()
    hello = {**hs.hello("n2", IDS, hs.new_nonce()), "msg_id": 1}
    assert call(n, hello, session)["type"] == hs.CHALLENGE
    assert call(n, {**FORGED, "msg_id": 2}, session)["code"] == 1000
    bad = call(n, {"type": hs.PROOF, "proof": "00" * 32, "msg_id": 3}, session)
    assert bad["code"] == 1000 and session.refused is not None
    assert call(n, {"type": "mv_read", "key": "account"})["values"] == []


def test_a_proven_peer_cannot_speak_for_another_node() -> None:
    n, session = node(), Session(peer="n2")
    forged = {"src": "n3", "dest": "n1", "body": {**FORGED, "msg_id": 1}}
    reply = call(n, forged, session)
    assert reply["code"] == 1000 and "cannot speak for 'n3'" in reply["text"]
    assert call(n, {"type": "mv_read", "key": "account"})["values"] == []
    own = {"src": "n2", "dest": "n1", "body": {**FORGED, "msg_id": 2}}
    assert call(n, own, session)["type"] == "mv_merge_ok"


def test_a_trusted_input_may_send_anything() -> None:
    n = node()
    forged = {"src": "n3", "dest": "n1", "body": {**FORGED, "msg_id": 1}}
    assert call(n, forged, trusted())["type"] == "mv_merge_ok"
