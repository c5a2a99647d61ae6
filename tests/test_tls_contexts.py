"""The TLS contexts over real loopback TCP, with certificates minted by trustme.

A member's certificate is accepted and its node ids read; a client without a
certificate is served; a certificate of another CA, a server that is not the
node dialled, and a plaintext client all fail.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from replica.testing.ports import LOOPBACK
from replica.transports.tls import (
    TlsFiles,
    certified_names,
    client_context,
    peer_client_context,
    server_context,
)


def node_files(directory: Path, ca: trustme.CA, name: str) -> TlsFiles:
    """The CA file and a certificate naming `name` (and the loopback address) with its key."""
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert = ca.issue_cert(name, LOOPBACK)
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    return TlsFiles(ca_file, cert_file, key_file)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


class Server:
    """A TLS echo of what each connection's verified certificate names."""

    def __init__(self) -> None:
        self.names: list[frozenset[str]] = []
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        names = certified_names(writer.get_extra_info("peercert"))
        self.names.append(names)
        writer.write((",".join(sorted(names)) or "-").encode() + b"\n")
        await writer.drain()
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def n1_server(tmp_path: Path, ca: trustme.CA) -> AsyncIterator[Server]:
    server = Server()
    context = server_context(node_files(tmp_path, ca, "n1"))
    server.server = await asyncio.start_server(server.serve, LOOPBACK, 0, ssl=context)
    try:
        yield server
    finally:
        server.server.close()
        await server.server.wait_closed()


async def ask(port: int, context: ssl.SSLContext, name: str) -> bytes:
    reader, writer = await asyncio.open_connection(
        LOOPBACK, port, ssl=context, server_hostname=name
    )
    try:
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_a_member_certificate_is_read_as_the_node_ids_it_names(
    n1_server: Server, tmp_path: Path, ca: trustme.CA
) -> None:
    n2 = node_files(tmp_path, ca, "n2")
    assert await ask(n1_server.port, peer_client_context(n2), "n1") == b"n2\n"


async def test_a_client_without_a_certificate_is_served_and_names_nobody(
    n1_server: Server, tmp_path: Path, ca: trustme.CA
) -> None:
    files = node_files(tmp_path, ca, "n2")
    anonymous = TlsFiles(files.ca_file)
    assert await ask(n1_server.port, client_context(anonymous), "n1") == b"-\n"
    assert n1_server.names == [frozenset()]


async def test_a_certificate_of_another_ca_fails_the_handshake(
    n1_server: Server, tmp_path: Path
) -> None:
    (tmp_path / "rogue").mkdir()
    rogue = node_files(tmp_path / "rogue", trustme.CA(), "n2")
    # It trusts the cluster's CA (written by the server's fixture): only its certificate is foreign.
    context = peer_client_context(TlsFiles(tmp_path / "ca.pem", rogue.cert_file, rogue.key_file))
    try:
        line = await ask(n1_server.port, context, "n1")
    except (ssl.SSLError, ConnectionError):
        line = b""  # refused in the handshake, or on the first read (TLS 1.3)
    assert line == b"", line
    assert n1_server.names == []


async def test_a_server_that_is_not_the_node_dialled_is_refused(
    n1_server: Server, tmp_path: Path, ca: trustme.CA
) -> None:
    n2 = node_files(tmp_path, ca, "n2")
    with pytest.raises(ssl.SSLCertVerificationError):
        await ask(n1_server.port, peer_client_context(n2), "n3")


async def test_a_plaintext_client_gets_no_data(n1_server: Server) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, n1_server.port)
    writer.write(b'{"type": "mv_read", "key": "k"}\n')
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b"n1" not in data and b"-" not in data.strip(), data  # at most a TLS alert
    assert not n1_server.names


def test_a_node_serving_or_dialling_tls_needs_its_certificate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cert_file"):
        server_context(TlsFiles(tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="cert_file"):
        peer_client_context(TlsFiles(tmp_path / "ca.pem"))
