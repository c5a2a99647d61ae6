"""What a handler may use of its node: the narrow context every handler is given.

Handlers see the node's identity, its keyspaces, its replication and durable
storage as far as `status` and repair need them, and nothing else: no
transport, no routing, no way to send a message of their own.  `Node` is the
one implementation; a test may hand handlers anything with these members.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from replica.keyspaces import Keyspaces
from replica.replication.replicator import Replicator
from replica.session import Session

Body = dict[str, Any]
Handler = Callable[["Context", Body, str | None], Body | None]
"""A handler: (context, request body, sender or None) -> reply body, None for no reply."""


class Durable(Protocol):
    """The part of durable storage `status` reports."""

    def status(self) -> dict[str, Any]: ...


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


class Context(Protocol):
    @property
    def node_id(self) -> str | None: ...

    @property
    def node_ids(self) -> list[str]: ...

    @property
    def keyspaces(self) -> Keyspaces: ...

    @property
    def replicator(self) -> Replicator | None:
        """None for a node alone, or one not yet bound to its cluster."""

    @property
    def durability(self) -> Durable | None:
        """None for a node in memory."""

    @property
    def session(self) -> Session:
        """What the connection of the request being handled has proven."""

    @property
    def cluster_secret(self) -> bytes | None:
        """The secret peers prove they hold; None: any connection may become a peer's."""

    @property
    def client_password(self) -> bytes | None:
        """The password clients must send (`auth`); None: none is asked."""

    @property
    def refusals(self) -> Refusals: ...

    @property
    def integers_checked(self) -> bool:
        """True while a request is handled again after its line was found free of huge integers."""

    def bind(self, node_id: str, node_ids: list[str]) -> None:
        """Take an identity from `init`."""

    def shown(self, keyspace: str, key: str) -> None:
        """A reply is about to show the key's state (see `Durability.note_read`)."""
