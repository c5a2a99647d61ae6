"""Replication never stalls on one key, and only peers that agree on the cluster link up.

Real node processes on loopback for each reproduction: states larger than a
client line replicate; a key a peer cannot apply is refused alone; a node
with another node list is refused at connect, with a logged reason on both
sides; pending work for a peer that never started stays bounded.  In-process
checks cover what a process cannot show cheaply: splitting a state by siblings
is a valid delta (Hypothesis), and the bound and repair of the tracker.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.crdt.clocked_siblings import ClockedSiblings
from replica.crdt.mv_register import MVRegister
from replica.node.handlers import mv as mv_ops
from replica.node.router import Node
from replica.replication.replicator import Replicator
from replica.replication.sibling_split import split_siblings
from replica.session import trusted
from tests.harness import (
    LOOPBACK,
    JsonClient,
    NodeProcess,
    ProxiedCluster,
    eventually,
    free_listen_ports,
    free_ports,
    write_cluster,
    write_cluster_view,
)
from tests.proxy import LinkProxy
from tests.strategies_mv import mv_registers
from tests.strategies_types import clocked_siblings

NODES = ["n1", "n2", "n3"]
BIG = 600_000  # two of these make a state longer than max_line_bytes (1 MiB)


# -- a state split by siblings is a valid delta ----------------------------------------------


def parts_of(state: list[Any], max_bytes: int) -> list[list[Any]]:
    return [
        orjson.loads(part)["siblings"] for part in split_siblings("k", "siblings", state, max_bytes)
    ]


@settings(max_examples=200)
@given(mv_registers(), mv_registers(), st.integers(1, 400), st.randoms())
def test_mv_parts_merged_in_any_order_equal_the_whole(
    base: MVRegister, whole: MVRegister, max_bytes: int, rng: random.Random
) -> None:
    parts = parts_of(whole.to_wire(), max_bytes)
    every = [sibling for part in parts for sibling in part]
    assert sorted(map(orjson.dumps, every)) == sorted(map(orjson.dumps, whole.to_wire()))
    rng.shuffle(parts)
    merged = base
    for part in parts:
        merged = merged.merge(MVRegister.from_wire(part))
    assert merged == base.merge(whole)


@settings(max_examples=200)
@given(clocked_siblings(), clocked_siblings(), st.integers(1, 400), st.randoms())
def test_kv_parts_merged_in_any_order_equal_the_whole(
    base: ClockedSiblings, whole: ClockedSiblings, max_bytes: int, rng: random.Random
) -> None:
    parts = parts_of(whole.to_wire(), max_bytes)
    rng.shuffle(parts)
    merged = base
    for part in parts:
        merged = merged.merge(ClockedSiblings.from_wire(part))
    assert merged == base.merge(whole)


def test_a_split_state_counts_as_delivered_only_with_its_last_part() -> None:
    node = Node("n1", ["n1", "n2"])
    replicator = node.replicator
    assert replicator is not None
    lines: list[bytes] = []
    accept = [True, False]  # the link takes the first part, then is full
    replicator.outbox = lambda dest, line: accept.pop(0) and not lines.append(line)
    replicator.link_up("n2")
    mv_ops.write(node.keyspaces, "k", "a" * 300_000, {})
    mv_ops.write(node.keyspaces, "k", "b" * 300_000, {})
    replicator.push()
    assert len(lines) == 1 and replicator.tracker.pending("n2") == 1  # still owed
    accept[:] = [True] * 4
    replicator.push()
    assert len(lines) == 3
    acks = [orjson.loads(line)["body"]["msg_id"] for line in lines[1:]]
    replicator.on_reply("n2", {"type": "mv_merge_ok", "in_reply_to": acks[0]})
    assert replicator.tracker.pending("n2") == 1
    replicator.on_reply("n2", {"type": "mv_merge_ok", "in_reply_to": acks[1]})
    assert replicator.tracker.pending("n2") == 0
    receiver = Node("n2", ["n1", "n2"])
    for line in lines[1:]:
        receiver.handle_line(line.rstrip(b"\n"), trusted())
    assert receiver.keyspaces.states["mv"] == node.keyspaces.states["mv"]


def one_batch_sent() -> tuple[Replicator, int]:
    """n1's replicator after pushing one key to n2, and the msg_id of that batch."""
    node = Node("n1", ["n1", "n2"])
    replicator = node.replicator
    assert replicator is not None
    lines: list[bytes] = []
    replicator.outbox = lambda dest, line: not lines.append(line)
    replicator.link_up("n2")
    mv_ops.write(node.keyspaces, "k", 1, None)
    replicator.push()
    return replicator, orjson.loads(lines[0])["body"]["msg_id"]


def test_a_refused_batch_is_done_with_at_the_sender() -> None:
    replicator, msg_id = one_batch_sent()
    replicator.on_reply("n2", {"type": "error", "code": 12, "text": "no", "in_reply_to": msg_id})
    assert replicator.tracker.pending("n2") == 0


def test_a_batch_the_peer_could_not_make_durable_is_sent_again() -> None:
    """Error 13 from a peer's failed commit is no refusal: the keys stay owed to it."""
    replicator, msg_id = one_batch_sent()
    error = {"type": "error", "code": 13, "text": "write not durable", "in_reply_to": msg_id}
    replicator.on_reply("n2", error)
    assert replicator.tracker.pending("n2") == 1


def test_pending_for_an_absent_peer_is_dropped_to_a_repair_when_it_connects() -> None:
    node = Node("n1", ["n1", "n2"])
    node.replicator = replicator = Replicator(
        "n1", ["n2"], node.keyspaces, node.msg_ids, max_pending=3
    )
    lines: list[bytes] = []
    replicator.outbox = lambda dest, line: not lines.append(line)
    for i in range(5):
        mv_ops.write(node.keyspaces, f"k{i}", i, None)
    (row,) = replicator.status()
    assert (row["pending"], row["dropped_to_repair"]) == (1, 4)
    replicator.link_up("n2")
    replicator.push()
    replicator.tick()  # not an anti-entropy tick, but a repair is due
    types = [orjson.loads(line)["body"]["type"] for line in lines]
    assert types == ["mv_merge", "ae_roots"]
    assert not replicator.tracker.needs_repair("n2")


# -- real processes -------------------------------------------------------------------------


def fingerprint(values: list[Any]) -> list[tuple[int, str]]:
    """What a read shows, small enough to print when a wait fails."""
    return sorted(
        (len(orjson.dumps(v)), hashlib.sha256(orjson.dumps(v)).hexdigest()[:12]) for v in values
    )


def mv_fingerprints(cluster: ProxiedCluster, key: str):  # type: ignore[no-untyped-def]
    async def observe() -> dict[str, list[tuple[int, str]]]:
        views = await cluster.request_each({"type": "mv_read", "key": key})
        return {n: fingerprint([e["value"] for e in view["values"]]) for n, view in views.items()}

    return observe


async def test_two_concurrent_600kb_siblings_replicate_to_every_node(
    cluster: ProxiedCluster,
) -> None:
    values = [secrets.token_urlsafe(BIG * 3 // 4) for _ in range(2)]
    for value in values:  # an empty context each: two concurrent siblings at n1
        reply = await cluster.request(
            "n1", {"type": "mv_write", "key": "big", "value": value, "context": {}}
        )
        assert reply["type"] == "mv_write_ok", reply["type"]
    want = fingerprint(values)
    await eventually(
        mv_fingerprints(cluster, "big"),
        lambda seen: all(view == want for view in seen.values()),
        "both 600 KB siblings at every node",
    )
    await cluster.request("n1", {"type": "mv_write", "key": "after", "value": "small"})
    await eventually(
        mv_fingerprints(cluster, "after"),
        lambda seen: all(view == fingerprint(["small"]) for view in seen.values()),
        "a later small write replicates too",
    )
    await cluster.wait_quiet()


async def test_an_mvcc_chain_longer_than_a_client_line_replicates(cluster: ProxiedCluster) -> None:
    """An MVCC chain is one state: its gossip line is longer than max_line_bytes."""
    values = [secrets.token_urlsafe(BIG * 3 // 4) for _ in range(2)]
    stamps = []
    for value in values:
        reply = await cluster.request("n1", {"type": "mvcc_put", "key": "chain", "value": value})
        assert reply["type"] == "mvcc_put_ok", reply
        stamps.append(reply["timestamp"])

    async def versions() -> dict[str, list[tuple[int, str]]]:
        seen = {}
        for node in NODES:
            found = []
            for stamp in stamps:
                body = {"type": "mvcc_get", "key": "chain", "read_timestamp": stamp}
                reply = await cluster.request(node, body)
                found.append(reply.get("value"))
            seen[node] = fingerprint(found)
        return seen

    want = fingerprint(values)
    await eventually(
        versions, lambda seen: all(v == want for v in seen.values()), "both versions everywhere"
    )
    await cluster.wait_quiet()


FORGED_COUNTER = 1 << 63


async def hello_as(client: JsonClient, peer: str, dest: str, node_ids: list[str]) -> dict[str, Any]:
    body = {"type": "peer_hello", "node_id": peer, "node_ids": node_ids}
    reply = await client.envelope_request(body, src=peer, dest=dest)
    return reply["body"]


async def test_a_key_a_peer_cannot_apply_is_refused_alone(cluster: ProxiedCluster) -> None:
    sibling = {"value": "ok", "dot": ["n1~forged", 1], "past": {}}
    deltas = [
        {"key": "before", "siblings": [sibling]},
        {"key": "bad", "siblings": [{**sibling, "dot": ["n1~forged", FORGED_COUNTER]}]},
        {"key": "after", "siblings": [sibling]},
    ]
    before = await eventually(
        cluster.statuses,
        lambda seen: all(p["connected"] for status in seen.values() for p in status["peers"]),
        "every link up",
    )
    async with await JsonClient.connect(LOOPBACK, cluster.ports["n2"]) as forger:
        assert (await hello_as(forger, "n1", "n2", NODES))["type"] == "peer_hello_ok"
        ack = await forger.envelope_request({"type": "mv_merge", "deltas": deltas}, "n1", "n2")
        assert ack["body"]["type"] == "mv_merge_ok", ack

    for key, shown in (("before", ["ok"]), ("bad", []), ("after", ["ok"])):
        reply = await cluster.request("n2", {"type": "mv_read", "key": key})
        assert [e["value"] for e in reply["values"]] == shown, (key, reply)
    status = await cluster.request("n2", {"type": "status"})
    refused = {p["id"]: p["refused_merges"] for p in status["peers"]}
    assert refused == {"n1": 1, "n3": 0}, status["peers"]

    # n2 keeps replicating and repairing: its copies spread, pending drains, and
    # anti-entropy rounds with every peer go on.
    rounds = {n: {p["id"]: p["ae_rounds"] for p in s["peers"]} for n, s in before.items()}
    await eventually(
        lambda: cluster.request_each({"type": "mv_read", "key": "after"}),
        lambda seen: all(len(r["values"]) == 1 for r in seen.values()),
        "anti-entropy carries n2's merged keys to n1 and n3",
    )
    await cluster.wait_quiet()
    await eventually(
        cluster.statuses,
        lambda seen: all(
            p["ae_rounds"] >= rounds[n][p["id"]] + 2 for n, s in seen.items() for p in s["peers"]
        ),
        "anti-entropy rounds keep running on every link",
    )
    text = cluster.nodes["n2"].stderr_text()
    assert "refused mv key 'bad' from n1" in text, text


async def test_a_peer_hello_with_another_node_list_is_refused_and_the_link_closed(
    cluster: ProxiedCluster,
) -> None:
    async with await JsonClient.connect(LOOPBACK, cluster.ports["n2"]) as stranger:
        refused = await hello_as(stranger, "n1", "n2", ["n1", "n3", "n2"])
        assert (refused["type"], refused["code"]) == ("error", 22), refused
        assert "node lists differ" in refused["text"], refused
        assert await stranger.closed_by_peer()
    async with await JsonClient.connect(LOOPBACK, cluster.ports["n2"]) as stranger:
        refused = await hello_as(stranger, "n9", "n2", NODES)
        assert (refused["type"], refused["code"]) == ("error", 22), refused
        assert await stranger.closed_by_peer()


@pytest.fixture
async def scratch() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="replica-limits-") as name:
        yield Path(name)


async def test_a_node_with_a_different_node_list_is_refused_with_a_logged_reason(
    scratch: Path,
) -> None:
    """n3 lists the nodes in another order: n1 refuses it, and it refuses n1, each logging once."""
    ports = dict(zip(NODES, free_ports(3), strict=True))
    (proxy_port,) = free_listen_ports(1)
    proxy = LinkProxy(proxy_port, ports["n1"])  # n3's dials to n1, counted
    shared = write_cluster(scratch, NODES, ports=list(ports.values()), gossip_interval_ms=50)
    odd_view = [("n1", proxy_port), ("n3", ports["n3"]), ("n2", ports["n2"])]
    odd = write_cluster_view(scratch / "n3.toml", odd_view, gossip_interval_ms=50)
    nodes = {
        "n1": NodeProcess(shared, "n1", LOOPBACK, ports["n1"]),
        "n2": NodeProcess(shared, "n2", LOOPBACK, ports["n2"]),
        "n3": NodeProcess(odd, "n3", LOOPBACK, ports["n3"]),
    }
    await proxy.start()
    try:
        for node in nodes.values():
            node.start()
        for node in nodes.values():
            await asyncio.to_thread(node.wait_ready)

        async def dials() -> int:
            return proxy.connections_accepted

        await eventually(dials, lambda count: count >= 4, "n3 keeps redialling n1")

        async def statuses() -> dict[str, Any]:
            seen = {}
            for node_id, node in nodes.items():
                async with await node.connect() as client:
                    status = await client.request({"type": "status"})
                seen[node_id] = {p["id"]: p["connected"] for p in status["peers"]}
            return seen

        seen = await eventually(
            statuses, lambda s: s["n1"]["n2"] and s["n2"]["n1"], "n1 and n2 link up"
        )
        assert seen == {
            "n1": {"n2": True, "n3": False},
            "n2": {"n1": True, "n3": False},
            "n3": {"n1": False, "n2": False},
        }
        n1_log, n3_log = nodes["n1"].stderr_text(), nodes["n3"].stderr_text()
        assert n1_log.count("refused peer 'n3' at connect: node lists differ") == 1, n1_log
        assert n3_log.count("peer n1 refused this node: node lists differ") == 1, n3_log
    finally:
        for node in nodes.values():
            await asyncio.to_thread(node.stop)
        await proxy.close()
        for node in nodes.values():
            print(f"--- {node.node_id} log ---\n{node.stderr_text()}")


WRITES_PAST_THE_BOUND = 100_500


async def test_pending_for_a_peer_that_never_started_stays_bounded(scratch: Path) -> None:
    """n2 is in the cluster file but never runs: past 100,000 keys n1 drops them to a repair."""
    ports = free_ports(2)
    config = write_cluster(scratch, ["n1", "n2"], ports=ports, gossip_interval_ms=50)
    n1 = NodeProcess(config, "n1", LOOPBACK, ports[0])
    n2 = NodeProcess(config, "n2", LOOPBACK, ports[1])
    try:
        n1.start()
        await asyncio.to_thread(n1.wait_ready)
        async with await n1.connect() as client:
            started = time.monotonic()
            batch = 5000
            for first in range(0, WRITES_PAST_THE_BOUND, batch):
                lines = b"".join(
                    orjson.dumps({"type": "lww_write", "key": f"k{i}", "value": i, "msg_id": i + 1})
                    + b"\n"
                    for i in range(first, min(first + batch, WRITES_PAST_THE_BOUND))
                )
                await client.send_raw(lines)
                last = min(first + batch, WRITES_PAST_THE_BOUND)
                await client.reply_to(last, timeout=60)
            status = await client.request({"type": "status"})
        (row,) = status["peers"]
        assert row["id"] == "n2" and not row["connected"], row
        assert row["dropped_to_repair"] > 0, row
        assert row["pending"] + row["dropped_to_repair"] == WRITES_PAST_THE_BOUND, row
        assert row["pending"] <= 100_000, row
        print(f"{WRITES_PAST_THE_BOUND} writes in {time.monotonic() - started:.1f} s")

        n2.start()
        await asyncio.to_thread(n2.wait_ready)

        async def n2_keys() -> dict[str, Any]:
            async with await n2.connect() as client:  # merging 100,000 keys keeps it busy
                return (await client.request({"type": "status"}, timeout=60))["keys"]

        await eventually(
            n2_keys,
            lambda keys: keys["lww"] == WRITES_PAST_THE_BOUND,
            "the repair brings n2 every key",
            timeout=120,
        )
    finally:
        for node in (n1, n2):
            await asyncio.to_thread(node.stop)
            print(f"--- {node.node_id} log ---\n{node.stderr_text()}")


async def test_a_key_written_without_pause_still_reaches_its_peers(cluster: ProxiedCluster) -> None:
    """Held back while not durable, a hot key still ships the state a commit made durable."""
    client = await cluster.client("n1")
    seen_during_load: set[str] = set()
    stop_at = time.monotonic() + 3.0
    number = 0
    while time.monotonic() < stop_at:
        lines = b"".join(
            orjson.dumps(
                {
                    "type": "lww_write",
                    "key": "hot",
                    "value": number + i,
                    "msg_id": 10**6 + number + i,
                }
            )
            + b"\n"
            for i in range(50)
        )
        number += 50
        await client.send_raw(lines)
        reply = await cluster.request("n2", {"type": "lww_read", "key": "hot"})
        if reply["type"] == "lww_read_ok":
            seen_during_load.add(str(reply["value"]))
    assert len(seen_during_load) >= 2, seen_during_load
