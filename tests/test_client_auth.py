"""The client password (`[cluster] password_file`): `auth` first, Redis's AUTH and HELLO AUTH."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError

from replica.errors import ErrorCode
from replica.testing import (
    LOOPBACK,
    JsonClient,
    ProxiedCluster,
    cluster,
    eventually,
    replica_command,
)

PASSWORD = "open sesame"
NOT_AUTHORISED = int(ErrorCode.NOT_AUTHORISED)
ONCE = Retry(NoBackoff(), 0)  # redis-py retries a refused AUTH otherwise

REQUESTS_BEFORE_AUTH: list[dict[str, Any]] = [
    {"type": "mv_write", "key": "k", "value": "stolen"},
    {"type": "mv_read", "key": "k"},
    {"type": "kv_put", "key": "k", "value": "stolen", "clock": {}},
    {"type": "kv_get", "key": "k"},
    {"type": "lww_write", "key": "k", "value": "stolen", "timestamp": 1},
    {"type": "mvcc_put", "key": "k", "value": "stolen", "timestamp": 1},
    {"type": "counter_add", "key": "k", "delta": 5},
    {"type": "status"},
    {"type": "init", "node_id": "n1", "node_ids": ["n1", "n2"]},
]


def password_file(directory: Path, text: str = PASSWORD) -> Path:
    path = directory / "password"
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


async def authenticated(running: ProxiedCluster, node_id: str) -> JsonClient:
    client = await running.client(node_id)
    assert (await client.call({"type": "auth", "password": PASSWORD}))["type"] == "auth_ok"
    return client


@pytest.mark.parametrize("secret", [True, False], ids=["secret", "no-secret"])
async def test_a_client_is_refused_until_auth_and_peers_replicate_without_a_password(
    tmp_path: Path, secret: bool
) -> None:
    path = password_file(tmp_path)
    async with cluster(2, secret=secret, password_file=str(path)) as running:
        stranger = await running.client("n1")
        for request in REQUESTS_BEFORE_AUTH:
            reply = await stranger.call(request)
            assert reply["type"] == "error" and reply["code"] == NOT_AUTHORISED, (request, reply)
            assert "auth" in reply["text"]
        wrong = await stranger.call({"type": "auth", "password": "open sesame!"})
        assert wrong["code"] == NOT_AUTHORISED and wrong["text"] == "wrong password"
        still = await stranger.call({"type": "mv_read", "key": "k"})
        assert still["code"] == NOT_AUTHORISED  # the connection stays open, and refused

        client = await authenticated(running, "n1")  # the same connection, now admitted
        assert client is stranger
        status = await client.status()
        assert status["auth_failures"] == 1
        assert status["keys"]["mv"] == status["keys"]["kv"] == status["keys"]["counter"] == 0
        await client.checked({"type": "mv_write", "key": "k", "value": "mine"})
        forged = await client.call(
            {
                "type": "mv_merge",
                "key": "k",
                "siblings": [{"value": "pwned", "dot": ["evil", 1], "past": {"n1": 10**9}}],
            }
        )
        assert forged["code"] == NOT_AUTHORISED

        other = await authenticated(running, "n2")

        async def read_n2() -> Any:
            reply = await other.call({"type": "mv_read", "key": "k"})
            return [v["value"] for v in reply.get("values", [])]

        await eventually(read_n2, lambda values: values == ["mine"], "n2 reads n1's write")
        assert (await client.status())["auth_failures"] == 1


async def test_redis_clients_send_auth_or_hello_auth_and_are_refused_before_it(
    tmp_path: Path,
) -> None:
    path = password_file(tmp_path)
    async with cluster(1, resp=True, password_file=str(path)) as running:
        host, port = running.resp_address("n1")
        stranger = aioredis.Redis(host=host, port=port, protocol=2)
        try:
            with pytest.raises(AuthenticationError, match="Authentication required"):
                await stranger.execute_command("MVREG", "SET", "k", "stolen")
        finally:
            await stranger.aclose()
        for protocol in (2, 3):  # AUTH <password>; HELLO 3 AUTH default <password>
            client = aioredis.Redis(host=host, port=port, protocol=protocol, password=PASSWORD)
            try:
                assert await client.execute_command("MVREG", "SET", "k", f"v{protocol}") == b"OK"
                assert await client.execute_command("MVREG", "GET", "k") == [
                    f"v{protocol}".encode()
                ]
            finally:
                await client.aclose()
        for protocol in (2, 3):
            wrong = aioredis.Redis(
                host=host, port=port, protocol=protocol, password="nope", retry=ONCE
            )
            try:
                with pytest.raises(AuthenticationError):
                    await wrong.execute_command("MVREG", "GET", "k")
            finally:
                await wrong.aclose()
        named = aioredis.Redis(host=host, port=port, username="default", password=PASSWORD)
        try:
            assert await named.execute_command("MVREG", "GET", "k") == [b"v3"]
        finally:
            await named.aclose()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n*1\r\n$4\r\nPING\r\n")
            assert await reader.readline() == (
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
            )
            assert await reader.readline() == b"-NOAUTH Authentication required.\r\n"
        finally:
            writer.close()
        status = await (await authenticated(running, "n1")).status()
        assert status["auth_failures"] == 3  # one per wrong AUTH or HELLO AUTH


async def test_auth_without_a_password_set_is_error_22() -> None:
    async with cluster(1, resp=True, memory=True) as running:
        client = await running.client("n1")
        reply = await client.call({"type": "auth", "password": PASSWORD})
        assert reply["code"] == int(ErrorCode.PRECONDITION_FAILED)
        assert "no client password" in reply["text"]
        assert (await client.status())["auth_failures"] == 0
        host, port = running.resp_address("n1")
        r = aioredis.Redis(host=host, port=port, protocol=2)
        try:
            with pytest.raises(AuthenticationError, match="called without any password configured"):
                await r.execute_command("AUTH", PASSWORD)
        finally:
            await r.aclose()


@pytest.mark.parametrize(
    ("text", "mode", "why"),
    [("", 0o600, "empty"), (PASSWORD, 0o644, "readable or writable by group or others")],
)
def test_a_password_file_it_cannot_use_exits_2_naming_it(
    tmp_path: Path, text: str, mode: int, why: str
) -> None:
    path = tmp_path / "password"
    path.write_text(text)
    path.chmod(mode)
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[cluster]\npassword_file = "password"\n\n[[nodes]]\nid = "n1"\n'
        f'host = "{LOOPBACK}"\nport = 1\n'
    )
    command = replica_command("serve", "--config", str(config), "--node", "n1", "--memory")
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done
    assert f"password file {path}" in done.stderr and why in done.stderr, done.stderr
