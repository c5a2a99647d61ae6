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


@dataclass(frozen=True)
class NodeContexts:
    """What a node serving TLS uses: one context for its ports, one for dialling peers."""

    server: ssl.SSLContext
    peer: ssl.SSLContext


def node_contexts(files: TlsFiles) -> NodeContexts:
    """Both contexts of a node, built once at start; ValueError naming the file that fails.

    A node with unusable TLS files must not start: it would serve nothing, or
    serve its ports in plaintext.
    """
    named = (("ca_file", files.ca_file), ("cert_file", files.cert_file))
    for name, path in (*named, ("key_file", files.key_file)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"[tls] {name} {path}: cannot read: {exc.strerror or exc}") from None
    try:
        ssl.create_default_context(cafile=str(files.ca_file))
    except ssl.SSLError as exc:
        raise ValueError(f"[tls] ca_file {files.ca_file}: not a PEM certificate: {exc}") from None
    try:
        return NodeContexts(server_context(files), peer_client_context(files))
    except ssl.SSLError as exc:
        where = f"cert_file {files.cert_file}" + (
            "" if files.key_file is None else f" with key_file {files.key_file}"
        )
        raise ValueError(f"[tls] {where}: not a certificate and its key: {exc}") from None


def certified_names(peercert: dict[str, Any] | None) -> frozenset[str]:
    """The DNS names of a verified peer certificate (`SSLObject.getpeercert()`); none without one.

    The transport asks only for a certificate the handshake verified against
    the CA (an optional client certificate that fails verification fails the
    handshake), so a name here was vouched for by the cluster's CA.
    """
    if not peercert:
        return frozenset()
    return frozenset(value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS")
