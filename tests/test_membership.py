"""Only proven members replicate: real nodes, real TCP, through `replica.testing`.

Without a secret any connection that says `peer_hello` becomes a peer's (a
loopback development cluster, where netcat may explore merges), and one that
does not gets error 1000 for every peer-only message.  With a secret only
nodes holding it exchange anything, in either direction, and both sides of
a failed handshake log why.  After a forged message, a marker written later
is waited for everywhere, so gossip had its chance to spread the forgery.
"""

from __future__ import annotations

import asyncio
import itertools
import stat
from pathlib import Path
from typing import Any

from replica.cli.secret_files import write_secret
from replica.replication import peer_handshake as hs
from replica.testing import JsonClient, ProxiedCluster, cluster, eventually

IDS = ["n1", "n2", "n3"]
FORGED = {
    "type": "mv_merge",
    "key": "account",
    "siblings": [{"value": "pwned", "dot": ["evil", 1], "past": {"n1": 1_000_000_000}}],
}
AE_ROOTS = {"type": "ae_roots", "roots": {"mv": "0" * 16}}
_markers = itertools.count()


async def values(c: ProxiedCluster, node: str, key: str) -> list[Any]:
    reply = await c.request(node, {"type": "mv_read", "key": key})
    return sorted(v if not isinstance(v, dict) else v["value"] for v in reply["values"])


async def settle(c: ProxiedCluster, writer: str, nodes: list[str]) -> None:
    """Write a fresh marker at `writer` and wait until every one of `nodes` holds it."""
    marker = f"marker{next(_markers)}"
    await c.request(writer, {"type": "mv_write", "key": marker, "value": 1})

    async def seen() -> dict[str, list[Any]]:
        return {n: await values(c, n, marker) for n in nodes}

    await eventually(seen, lambda s: all(v == [1] for v in s.values()), f"{marker} everywhere")


async def refused(client: JsonClient, body: dict[str, Any]) -> str:
    reply = await client.request(body)
    assert reply["type"] == "error" and reply["code"] == 1000, reply
    return str(reply["text"])


async def logged(c: ProxiedCluster, node: str, *texts: str) -> None:
    async def text() -> str:
        return c.nodes[node].stderr_text()

    await eventually(text, lambda t: all(x in t for x in texts), f"{node} logs {texts}")


async def test_without_a_secret_a_plain_client_cannot_merge_but_a_hello_lets_it() -> None:
    async with cluster(3, memory=True) as c:
        await c.request("n1", {"type": "mv_write", "key": "account", "value": "real"})
        await settle(c, "n1", IDS)
        for node in IDS:
            async with await c.nodes[node].connect() as client:
                assert "not proven cluster membership" in await refused(client, FORGED)
                await refused(client, AE_ROOTS)
                assert (await client.envelope_request(FORGED, "n2", node))["body"]["code"] == 1000
        await settle(c, "n2", IDS)
        for node in IDS:
            assert await values(c, node, "account") == ["real"], node

        # netcat's way in, documented: say hello as a peer, then merge
        async with await c.nodes["n2"].connect() as client:
            hello = hs.hello("n3", IDS, None)
            assert (await client.request(hello))["type"] == hs.HELLO_OK
            forged_for_n1 = {"src": "n1", "dest": "n2", "body": FORGED}
            await client.send({**forged_for_n1, "body": {**FORGED, "msg_id": 900}})
            reply = await client.reply_to(900, envelope=True)
            assert reply["body"]["code"] == 1000, reply  # proven as n3, it cannot speak for n1
            assert "cannot speak for 'n1'" in reply["body"]["text"]
            assert (await client.request(FORGED))["type"] == "mv_merge_ok"
        assert await values(c, "n2", "account") == ["pwned"]  # its past covers n1's write


async def test_with_a_secret_members_replicate_and_a_client_cannot_become_one() -> None:
    async with cluster(3, memory=True, secret=True) as c:
        assert stat.S_IMODE(c.secret_file.stat().st_mode) == 0o600
        await c.request("n1", {"type": "mv_write", "key": "account", "value": "real"})
        await eventually(  # members replicate
            lambda: asyncio.gather(*(values(c, n, "account") for n in IDS)),
            lambda got: all(v == ["real"] for v in got),
            "n1's write on every member",
        )

        async with await c.nodes["n2"].connect() as client:  # a hello without the secret
            text = await refused(client, hs.hello("n1", IDS, None))
            assert "requires the cluster secret" in text
            assert await client.closed_by_peer()
        async with await c.nodes["n2"].connect() as client:  # a hello, then a guessed proof
            challenge = await client.request(hs.hello("n1", IDS, hs.new_nonce()))
            assert challenge["type"] == hs.CHALLENGE and len(challenge["proof"]) == 64
            await refused(client, FORGED)
            await refused(client, {"type": hs.PROOF, "proof": "00" * 32})
            assert await client.closed_by_peer()
        async with await c.nodes["n3"].connect() as client:
            await refused(client, FORGED)
            await refused(client, AE_ROOTS)
        await settle(c, "n1", IDS)
        for node in IDS:
            assert await values(c, node, "account") == ["real"], node
        await logged(c, "n2", "refused peer 'n1': 'n2' requires the cluster secret")


async def test_a_node_with_another_secret_exchanges_nothing_either_way(tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_secret(other)
    async with cluster(
        3,
        memory=True,
        secret=True,
        node_settings={"n3": {"secret_file": str(other)}},
        linked=False,
    ) as c:
        await c.request("n1", {"type": "mv_write", "key": "ours", "value": 1})
        await c.request("n3", {"type": "mv_write", "key": "theirs", "value": 3})
        await settle(c, "n2", ["n1", "n2"])
        await settle(c, "n1", ["n1", "n2"])
        for node in ("n1", "n2"):
            assert await values(c, node, "theirs") == [], node
        assert await values(c, "n3", "ours") == []
        for node in ("n1", "n2"):
            await logged(
                c,
                node,
                "peer n3 failed to prove the cluster secret",
                "refused peer 'n3': it closed the connection before proving the cluster secret",
            )
        await logged(
            c,
            "n3",
            "peer n1 failed to prove the cluster secret",
            "refused peer 'n1': it closed the connection before proving the cluster secret",
        )
        statuses = await c.statuses()
        assert not any(p["connected"] for p in statuses["n3"]["peers"])


async def test_a_secret_on_one_side_only_exchanges_nothing(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    write_secret(secret)
    async with cluster(
        2, memory=True, node_settings={"n1": {"secret_file": str(secret)}}, linked=False
    ) as c:
        await c.request("n1", {"type": "mv_write", "key": "from1", "value": 1})
        await c.request("n2", {"type": "mv_write", "key": "from2", "value": 2})
        await logged(
            c,
            "n1",
            "refused peer 'n2': 'n1' requires the cluster secret and 'n2' offers no proof",
            "peer n2 refused this node: 'n1' asks for proof of a cluster secret and 'n2' has none",
        )
        await logged(
            c,
            "n2",
            "refused peer 'n1': 'n1' asks for proof of a cluster secret and 'n2' has none",
            "peer n1 refused this node: 'n1' requires the cluster secret",
        )
        assert await values(c, "n1", "from2") == [] and await values(c, "n2", "from1") == []
        statuses = await c.statuses()
        assert not any(p["connected"] for s in statuses.values() for p in s["peers"])


async def test_a_challenge_left_unanswered_closes_the_connection_in_time() -> None:
    async with cluster(2, memory=True, secret=True) as c:
        async with await c.nodes["n1"].connect() as client:
            challenge = await client.request(hs.hello("n2", ["n1", "n2"], hs.new_nonce()))
            assert challenge["type"] == hs.CHALLENGE
            assert await client.closed_by_peer(timeout=hs.HANDSHAKE_TIMEOUT_S + 5)
        await logged(c, "n1", "refused peer 'n2': it did not answer the challenge within 5 s")
