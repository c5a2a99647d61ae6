"""TLS contexts for a node's ports, its peer links and its clients, from `[tls]` files.

Contract: every certificate of a cluster is signed by the one CA in
`ca_file`, and a node's certificate names its node id as a DNS name in its
subjectAltName (it may name host names and addresses too, for clients).
`server_context` serves TLS only, and asks for a client certificate without
requiring one: clients need none, while a connection whose certificate
verifies against the CA carries the node ids it names (`certified_names`),
which is how a peer proves it is the member it claims to be.
`peer_client_context` dials a peer with this node's certificate and checks
that the peer's names the node id dialled (`server_hostname=<peer id>`);
`client_context` is the same without a certificate of its own, for clients
such as `replica status`, which verify the node they ask by its id.

TLS 1.2 is the floor.  Nothing here reads a socket: the transports hand the
contexts to asyncio.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIN_VERSION = ssl.TLSVersion.TLSv1_2


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of one node: the cluster's CA, and this node's certificate and key."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """For a listening port: TLS only, a client certificate asked for but optional."""
    if files.cert_file is None:
        raise ValueError("a node serving TLS needs cert_file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca_file))
    context.minimum_version = MIN_VERSION
    context.load_cert_chain(
        str(files.cert_file), None if files.key_file is None else str(files.key_file)
    )
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """For a client: the server's certificate must verify and name what it is dialled as."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_file))
    context.minimum_version = MIN_VERSION
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if files.cert_file is not None:
        key = None if files.key_file is None else str(files.key_file)
        context.load_cert_chain(str(files.cert_file), key)
    return context


def peer_client_context(files: TlsFiles) -> ssl.SSLContext:
    """For dialling a peer: `client_context` presenting this node's own certificate."""
    if files.cert_file is None:
        raise ValueError("a node dialling peers over TLS needs cert_file")
    return client_context(files)


def certified_names(peercert: dict[str, Any] | None) -> frozenset[str]:
    """The DNS names of a verified peer certificate (`SSLObject.getpeercert()`); none without one.

    The transport asks only for a certificate the handshake verified against
    the CA (an optional client certificate that fails verification fails the
    handshake), so a name here was vouched for by the cluster's CA.
    """
    if not peercert:
        return frozenset()
    return frozenset(value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS")
