"""What a handler may use of its node: the narrow context every handler is given.

Handlers see the node's identity, its keyspaces, its replication and durable
storage as far as `status` and repair need them, and nothing else: no
transport, no routing, no way to send a message of their own.  `Node` is the
one implementation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replica.keyspaces import Keyspaces
from replica.replication.replicator import Replicator
from replica.session import Session

Body = dict[str, Any]
Handler = Callable[["Context", Body, str | None], Body | None]
"""A handler: (context, request body, sender or None) -> reply body, None for no reply."""


@dataclass(slots=True)
class Refusals:
    """What the node refused to strangers since it started, reported by `status`."""

    auth_failures: int = 0
    """Wrong client passwords."""
    connections: int = 0
    """Connections refused over `max_connections`."""
    partial_lines: int = 0
    """Connections closed for holding an unfinished line past `partial_line_timeout_ms`."""
    tls_handshakes: int = 0
    """Connections closed because their TLS handshake failed."""


class Context:
    """What a handler may use of its node; `Node` is the one subclass.

    A class rather than a protocol, so that the compiled build calls handlers'
    uses of it natively.  The attributes are set by the subclass.  Only plain
    attributes and methods: compiled code crashes on a subclass property that
    adds a setter to a base property.
    """

    node_id: str | None
    node_ids: list[str]
    keyspaces: Keyspaces
    replicator: Replicator | None
    """None for a node alone, or one not yet bound to its cluster."""
    session: Session
    """What the connection of the request being handled has proven."""
    refusals: Refusals
    integers_checked: bool
    """True while a request is handled again after its line was found free of huge integers."""

    cluster_secret: bytes | None
    """The secret peers prove they hold; None: any connection may become a peer's."""
    client_password: bytes | None
    """The password clients must send (`auth`); None: none is asked."""

    def durable_status(self) -> dict[str, Any]:
        """What `status` shows of durable storage: `{"mode": "memory"}` for a node in memory."""
        raise NotImplementedError

    def bind(self, node_id: str, node_ids: list[str]) -> None:
        """Take an identity from `init`."""
        raise NotImplementedError

    def shown(self, keyspace: str, key: str) -> None:
        """A reply is about to show the key's state (see `Durability.note_read`)."""
        raise NotImplementedError
