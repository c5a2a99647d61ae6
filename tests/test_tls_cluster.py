"""TLS on every port and peer link: real nodes, real TCP, certificates minted with trustme.

With `[tls]` a node serves TLS only on both ports; a connection may act as
member X only if its client certificate, signed by the cluster's CA, names X;
peers dial each other over mutual TLS and verify the node they dial by its
id.  After a forged message, a marker written later is waited for everywhere,
so gossip had its chance to spread the forgery.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from replica.cli.secret_files import write_secret
from replica.testing import JsonClient, ProxiedCluster, cluster, eventually, replica_command
from replica.testing.ports import LOOPBACK, free_ports
from tests.test_membership import FORGED, IDS, logged, settle, values

RUN_TIMEOUT = 30


def hello(node_id: str) -> dict[str, Any]:
    return {"type": "peer_hello", "node_id": node_id, "node_ids": IDS}


async def tls_client(c: ProxiedCluster, node: str, as_node: str | None = None) -> JsonClient:
    return await JsonClient.connect(
        LOOPBACK, c.ports[node], tls=c.tls_context(as_node), server_hostname=node
    )


async def test_clients_and_peers_speak_tls_and_redis_py_does_too() -> None:
    async with cluster(3, tls=True, resp=True) as c:
        await c.request("n1", {"type": "mv_write", "key": "k", "value": "v"})
        await eventually(
            lambda: asyncio.gather(*(values(c, n, "k") for n in IDS)),
            lambda got: all(v == ["v"] for v in got),
            "k replicated over mutual TLS",
        )
        host, port = c.resp_address("n2")
        client = aioredis.Redis(
            host=host, port=port, ssl=True, ssl_ca_certs=str(c.tls_ca_file), protocol=2
        )
        try:
            assert await client.execute_command("MVREG", "SET", "r", "over-tls") == b"OK"
            assert await client.execute_command("MVREG", "GET", "r") == [b"over-tls"]
        finally:
            await client.aclose()
        for node in IDS:
            assert "(TLS)" in c.nodes[node].stderr_text()


async def test_a_plaintext_client_gets_no_data() -> None:
    async with cluster(1, tls=True) as c:
        await c.request("n1", {"type": "mv_write", "key": "k", "value": "secret-value"})
        plain = await JsonClient.connect(LOOPBACK, c.ports["n1"])
        try:
            await plain.send({"type": "mv_read", "key": "k", "msg_id": 1})
            received = b""  # a node serving plaintext would answer, and never close
            with contextlib.suppress(ConnectionError):
                received = await asyncio.wait_for(plain.reader.read(), 10)
            assert b"secret-value" not in received and b"mv_read_ok" not in received
        finally:
            await plain.close()
        await logged_line(c, "n1", "TLS handshake from 127.0.0.1 failed", "plaintext client?")
        assert (await c.request("n1", {"type": "status"}))["tls_handshakes_failed"] == 1


async def test_a_port_probe_is_not_a_failure_and_a_silent_client_is_closed() -> None:
    async with cluster(1, tls=True) as c:
        for _ in range(3):  # connect and close without a byte, as health checks do
            _, writer = await asyncio.open_connection(LOOPBACK, c.ports["n1"])
            writer.close()
        silent = await JsonClient.connect(LOOPBACK, c.ports["n1"])
        try:
            assert await asyncio.wait_for(silent.reader.read(), 15) == b""  # closed by n1
        finally:
            await silent.close()
        await logged_line(c, "n1", "TLS handshake from 127.0.0.1 failed: it sent nothing")
        status = await c.request("n1", {"type": "status"})
        assert status["tls_handshakes_failed"] == 1, status
        assert "plaintext" not in c.nodes["n1"].stderr_text()
        lingering = await JsonClient.connect(LOOPBACK, c.ports["n1"])  # open at shutdown
    await lingering.close()


async def logged_line(c: ProxiedCluster, node: str, *texts: str) -> None:
    """Until one line of the node's log holds every text."""

    async def lines() -> list[str]:
        return c.nodes[node].stderr_text().splitlines()

    await eventually(
        lines, lambda got: any(all(x in line for x in texts) for line in got), f"{node}: {texts}"
    )


async def test_a_client_without_a_member_certificate_cannot_send_peer_verbs() -> None:
    async with cluster(3, tls=True) as c:
        await c.request("n1", {"type": "mv_write", "key": "account", "value": "mine"})
        await settle(c, "n1", IDS)
        client = await tls_client(c, "n1")
        try:
            reply = await client.request(FORGED)
            assert reply["code"] == 1000, reply
            reply = await client.envelope_request(hello("n2"), src="n2", dest="n1")
            assert reply["body"]["code"] == 1000, reply
            assert "no TLS client certificate" in reply["body"]["text"]
        finally:
            await client.close()
        await settle(c, "n1", IDS)
        for node in IDS:
            assert await values(c, node, "account") == ["mine"]
        await logged(c, "n1", "refused peer 'n2'", "no TLS client certificate")


async def test_a_certificate_proves_only_the_node_it_names() -> None:
    async with cluster(3, tls=True) as c:
        impostor = await tls_client(c, "n1", as_node="n2")
        try:
            reply = await impostor.envelope_request(hello("n3"), src="n3", dest="n1")
            assert reply["body"]["code"] == 1000, reply
            assert "names ['localhost', 'n2'], not 'n3'" in reply["body"]["text"], reply
            assert await impostor.closed_by_peer()
        finally:
            await impostor.close()
        await logged(c, "n1", "refused peer 'n3'", "not 'n3'")
        member = await tls_client(c, "n1", as_node="n2")
        try:
            reply = await member.envelope_request(hello("n2"), src="n2", dest="n1")
            assert reply["body"]["type"] == "peer_hello_ok", reply
        finally:
            await member.close()


async def test_a_node_of_another_ca_exchanges_nothing_and_both_sides_log_why() -> None:
    async with cluster(3, tls=True, foreign_ca=["n3"]) as c:
        await c.request("n1", {"type": "mv_write", "key": "from-n1", "value": 1})
        await c.request("n3", {"type": "mv_write", "key": "from-n3", "value": 3})
        for node in ("n1", "n3"):  # each side of each link: the dialler, and the acceptor
            await logged(c, node, "TLS handshake failed: certificate verify failed")
            await logged_line(
                c, node, "TLS handshake from 127.0.0.1 failed", "does it trust this node's CA?"
            )
        await settle(c, "n1", ["n1", "n2"])
        await settle(c, "n2", ["n1", "n2"])
        assert await values(c, "n3", "from-n1") == []
        for node in ("n1", "n2"):
            assert await values(c, node, "from-n3") == []
        peers = {
            p["id"]: p["connected"] for p in (await c.request("n3", {"type": "status"}))["peers"]
        }
        assert peers == {"n1": False, "n2": False}


async def status_rows(c: ProxiedCluster) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        replica_command("status", "--config", str(c.directory / "n1.toml")),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


async def test_replica_status_speaks_tls() -> None:
    async with cluster(3, tls=True) as c:
        await c.wait_quiet()
        result = await status_rows(c)
        assert result.returncode == 0, result
        rows = result.stdout.splitlines()
        for node in IDS:
            assert any(row.startswith(node) and "down" not in row for row in rows), result.stdout


async def test_replica_status_sends_the_client_password(tmp_path: Path) -> None:
    password = tmp_path / "password"
    write_secret(password)
    async with cluster(2, tls=True, password_file=str(password)) as c:
        client = await c.client("n1")
        assert (await client.request({"type": "status"}))["code"] == 1000
        result = await status_rows(c)
        assert result.returncode == 0, result
        rows = result.stdout.splitlines()
        for node in ("n1", "n2"):
            assert any(row.startswith(node) and "down" not in row for row in rows), result.stdout


def test_a_tls_file_the_node_cannot_read_stops_it(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = tmp_path / "cluster.toml"
    config.write_text(
        "[tls]\n"
        'ca_file = "missing-ca.pem"\n'
        'cert_file = "n1.pem"\n'
        "\n[[nodes]]\n"
        f'id = "n1"\nhost = "{LOOPBACK}"\nport = {port}\n'
    )
    command = replica_command("serve", "--config", str(config), "--node", "n1", "--memory")
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line and str(tmp_path / "missing-ca.pem") in line, line


async def test_a_node_whose_certificate_the_others_do_not_trust_learns_why() -> None:
    async with cluster(3, tls=True, foreign_ca=["n3"]) as c:
        foreign = c.directory / c.tls["n3"]["ca_file"]
        foreign.write_bytes(foreign.read_bytes() + c.tls_ca_file.read_bytes())
        await c.restart("n3")  # n3 now trusts the others, and they still do not trust it
        await c.request("n3", {"type": "mv_write", "key": "from-n3", "value": 3})
        await logged(c, "n3", "peer n1 ended the TLS connection", "does it trust")
        await logged_line(c, "n1", "TLS handshake from 127.0.0.1 failed: certificate verify failed")
        assert (await c.request("n1", {"type": "status"}))["tls_handshakes_failed"] > 0
        await settle(c, "n1", ["n1", "n2"])
        for node in ("n1", "n2"):
            assert await values(c, node, "from-n3") == []
