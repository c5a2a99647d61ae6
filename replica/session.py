"""What one connection has proven: the trust state every request is judged by.

A transport makes one `Session` per connection and hands it to
`Node.handle_line` with every line.  A connection starts as a client that
proved nothing; the peer handshake (`replica.replication.peer_handshake`)
makes it a proven peer, `peer`, the one node it may speak for.  Peer-only
messages are accepted only from a proven peer, or on a `trusted` input
(stdio: the harness's network is the only way in).  When the node has a
client password, every other request is refused too until the connection
sends it (`authenticated`), unless it is a proven peer or trusted.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Challenge:
    """The acceptor's side of a handshake in progress: who said hello, and both nonces."""

    dialler: str
    dialler_nonce: bytes = field(repr=False)
    acceptor_nonce: bytes = field(repr=False)


@dataclass(slots=True)
class Session:
    """One connection's trust: set by the handshake, read by the node on every request.

    `news` is raised whenever the handshake changes the session, so a
    transport looks at one flag per line to learn that it must close the
    connection (`refused`), start the handshake's clock (`challenge`), or
    lift the line limit for a peer (`peer`).
    """

    peer: str | None = None
    """The node id this connection proved; None until it proves one."""
    trusted: bool = False
    """Every message is trusted (stdio mode)."""
    challenge: Challenge | None = None
    """A challenge sent and not yet answered (acceptor side)."""
    refused: str | None = None
    """Why the handshake failed: the connection is closed after its reply."""
    authenticated: bool = False
    """The connection sent the client password (`auth`)."""
    certified: frozenset[str] | None = None
    """The node ids a verified TLS client certificate names (none without one); None: no TLS."""
    news: bool = False

    @property
    def proven(self) -> bool:
        """May this connection send peer-only messages?"""
        return self.trusted or self.peer is not None

    @property
    def admitted(self) -> bool:
        """May this connection send client requests when the node has a password?"""
        return self.authenticated or self.trusted or self.peer is not None


def trusted() -> Session:
    """A session for an input where every message is trusted: stdio, or a test in process."""
    return Session(trusted=True)
