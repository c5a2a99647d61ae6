"""A node built to lose one peer's writes, and the history checker catching it.

`REPLICA_TEST_DROP_MERGES_FROM=n1` makes a node acknowledge every merge as
usual but keep nothing n1 wrote, whether n1 sends it or anti-entropy with
another node relays it.  In-process tests pin what such a node keeps of each
merge; real clusters then show the checker naming exactly the writes n1
acknowledged and the node that lacks them, and passing the same scenario on
an honest cluster.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from replica.node.router import Node, NodeSettings
from replica.replication import delta_compression
from replica.session import trusted
from replica.testing import History, ProxiedCluster, Report, check, cluster, eventually
from replica.testing.recording import final_reads, recording_clients

DROPPING = {"n3": {"REPLICA_TEST_DROP_MERGES_FROM": "n1"}}

# -- in process: what a dropping node keeps of a merge ------------------------------------


def deliver(node: Node, src: str, body: dict[str, Any]) -> dict[str, Any]:
    """A peer's merge in the envelope form; the reply body."""
    line = orjson.dumps({"src": src, "dest": node.node_id, "body": {"msg_id": 7, **body}})
    out = node.handle_line(line, trusted())
    assert out is not None
    reply: dict[str, Any] = orjson.loads(out)["body"]
    return reply


def read(node: Node, type_: str, key: str) -> dict[str, Any]:
    out = node.handle_line(orjson.dumps({"type": type_, "key": key, "msg_id": 1}))
    assert out is not None
    reply: dict[str, Any] = orjson.loads(out)
    return reply


def mv_sibling(actor: str, counter: int, value: Any) -> dict[str, Any]:
    return {"value": value, "dot": [actor, counter], "past": {}}


def dropping_node(peer: str | None = "n1") -> Node:
    return Node("n3", ["n1", "n2", "n3"], NodeSettings(drop_merges_from=peer))


@pytest.mark.parametrize(
    "body",
    [
        {"type": "mv_merge", "key": "k", "siblings": [mv_sibling("n1", 1, "a")]},
        {"type": "mv_merge", "key": "k", "entry": {"value": "a", "vclock": {"n1": 1}}},
        {"type": "kv_merge", "key": "k", "siblings": [{"value": "a", "clock": [1]}]},
        {"type": "counter_merge", "deltas": [{"key": "k", "state": {"p": {"n1": 4}, "n": {}}}]},
    ],
)
def test_every_merge_from_the_peer_is_acknowledged_and_nothing_kept(body: dict[str, Any]) -> None:
    node = dropping_node()
    assert deliver(node, "n1", body) == {
        "type": f"{body['type']}_ok",
        "in_reply_to": 7,
        "msg_id": 0,
    }
    assert node.keyspaces.states[body["type"].split("_")[0]] == {}


def test_states_relayed_by_another_peer_lose_what_the_peer_wrote() -> None:
    node = dropping_node()
    incarnation = "n1~00aa11"  # a durable node's dots name an incarnation of it
    mv = [mv_sibling(incarnation, 1, "from n1"), mv_sibling("n2", 1, "from n2")]
    deltas = [
        {"key": "k", "siblings": mv},
        {"key": "only-n1", "siblings": [mv_sibling("n1", 2, "gone")]},
    ]
    packed = delta_compression.pack(orjson.dumps(deltas))
    assert deliver(node, "n2", {"type": "mv_merge", "deltas_z": packed})["type"] == "mv_merge_ok"
    assert [v["value"] for v in read(node, "mv_read", "k")["values"]] == ["from n2"]
    assert read(node, "mv_read", "only-n1")["values"] == []

    counter = {"p": {incarnation: 5, "n2": 2}, "n": {"n1": 1}}
    deliver(node, "n2", {"type": "counter_merge", "key": "c", "state": counter})
    assert read(node, "counter_read", "c")["value"] == 2

    lww = {"value": "from n1", "timestamp": 1 << 20, "replica": "n1"}
    deliver(node, "n2", {"type": "lww_merge", "deltas": [{"key": "l", "state": lww}]})
    assert read(node, "lww_read", "l")["type"] == "error"

    versions = [[1 << 20, "from n1", "n1"], [2 << 20, "from n2", "n2"]]
    chain = {"versions": versions, "floor": -1, "dropped": 0}
    deliver(node, "n2", {"type": "mvcc_merge", "key": "m", "state": chain})
    assert node.keyspaces.states["mvcc"]["m"].to_wire()["versions"] == [versions[1]]


def test_without_the_setting_every_merge_is_kept() -> None:
    node = dropping_node(None)
    siblings = [mv_sibling("n1", 1, "a"), mv_sibling("n2", 1, "b")]
    deliver(node, "n1", {"type": "mv_merge", "key": "k", "siblings": siblings})
    assert [v["value"] for v in read(node, "mv_read", "k")["values"]] == ["a", "b"]


# -- real clusters: the checker against a node that loses writes --------------------------


async def test_a_restarted_node_refilled_by_anti_entropy_still_lacks_the_peers_writes() -> None:
    async with cluster(n=3, node_env=DROPPING) as running:
        n2 = await running.client("n2")
        async with running.partitioned([["n1"], ["n2"], ["n3"]]):
            await (await running.client("n1")).mv_write("k", "from n1")
            await n2.mv_write("k", "from n2")
        await eventually(lambda: n2.mv_read("k"), lambda r: len(r["values"]) == 2, "siblings")
        await running.restart("n3")  # in memory: it starts empty, refilled by repair alone

        # Whichever peer repaired it, the state n3 got for k carried n1's sibling too.
        n3 = await running.client("n3")
        read = await eventually(
            lambda: n3.mv_read("k"), lambda r: len(r["values"]) > 0, "k repaired at n3"
        )
        assert [s["value"] for s in read["values"]] == ["from n2"]
        assert "n3 DROPS every write of n1" in running.nodes["n3"].stderr_text()


async def write_on_every_node(running: ProxiedCluster, history: History) -> dict[str, int]:
    """MV writes on distinct and shared keys (some with contexts), LWW and counter writes.

    Returns the history index of the operations the tests name.
    """
    async with recording_clients(running, history) as clients:
        n1, n2 = clients["n1"], clients["n2"]
        for i, (node, client) in enumerate(clients.items(), start=1):
            await client.mv_write(f"cart-{node}", [f"{node}-first"])
            await client.mv_write("shared", f"{node}-first")
            await client.counter_add("visits", i)
        cart = await n1.mv_read("cart-n1")
        await n1.mv_write("cart-n1", ["n1-first", "n1-second"], context=cart["context"])
        indexes = {"n1 cart": len(history.operations) - 1}

        # n2 resolves the shared key once it has seen every node's write, n1's included.
        shared = await eventually(
            lambda: n2.mv_read("shared"),
            lambda r: len(r["context"]) == len(clients),
            "every node's write seen at n2",
        )
        await n2.mv_write("shared", "resolved at n2", context=shared["context"])

        # LWW: n1 writes after every node has seen n2's write, so n1's timestamp is the
        # greater and n3 holds n2's value when it drops n1's.
        await n2.lww_write("motd", "from n2")
        for node in ("n1", "n3"):
            await eventually(
                lambda c=clients[node]: c.call({"type": "lww_read", "key": "motd"}),
                _has_value,
                f"n2's motd at {node}",
            )
        await n1.lww_write("motd", "from n1")
        indexes["n1 motd"] = len(history.operations) - 1
    return indexes


def _has_value(reply: dict[str, Any]) -> bool:
    return reply.get("type") == "lww_read_ok"


async def settle(running: ProxiedCluster, history: History, agreeing: list[str]) -> None:
    """Until the nodes in `agreeing` answer every final read alike, nothing is pending
    anywhere, and every node shows n2's own cart (the rest has had time to arrive)."""

    async def observe() -> dict[str, Any]:
        reads = await final_reads(running, history)
        return {"statuses": await running.statuses(), "reads": [tuple(r) for r in reads]}

    def settled(seen: dict[str, Any]) -> bool:
        by_request: dict[bytes, dict[str, Any]] = {}
        for node, request, reply in seen["reads"]:
            body = {k: v for k, v in reply.items() if k not in ("msg_id", "in_reply_to")}
            by_request.setdefault(orjson.dumps(request), {})[node] = body
        alike = all(
            all(answers[n] == answers[agreeing[0]] for n in agreeing)
            for answers in by_request.values()
        )
        n2_cart = by_request[orjson.dumps({"type": "mv_read", "key": "cart-n2"})]
        return (
            alike
            and all(answers["values"] for answers in n2_cart.values())
            and all(
                peer["connected"] and peer["pending"] == 0
                for status in seen["statuses"].values()
                for peer in status["peers"]
            )
        )

    await eventually(observe, settled, f"{', '.join(agreeing)} agree", timeout=20)


def lost_operations(report: Report, family: str) -> set[int]:
    return {
        op.index
        for v in report.violations
        if v.kind == "lost write" and v.family == family
        for op in v.operations[:1]
    }


async def test_the_checker_names_the_writes_a_node_lost_and_that_node() -> None:
    async with cluster(n=3, node_env=DROPPING) as running:
        history = History()
        named = await write_on_every_node(running, history)
        await settle(running, history, ["n1", "n2"])
        report = check(history, await final_reads(running, history))

    assert not report.ok
    ops = history.operations
    assert lost_operations(report, "mv") == {named["n1 cart"]}, report.text
    assert lost_operations(report, "lww") == {named["n1 motd"]}, report.text
    assert all(ops[i].node == "n1" and ops[i].ok for i in lost_operations(report, "mv"))
    cart = next(v for v in report.violations if v.kind == "lost write" and v.key == "cart-n1")
    assert "missing on n3;" in cart.text, report.text
    motd = next(v for v in report.violations if v.kind == "lost write" and v.key == "motd")
    assert motd.text.startswith("n3 shows"), report.text
    total = next(v for v in report.violations if v.kind == "wrong total")
    assert total.text.startswith("n3 reads 5, expected 6"), report.text
    # What n3 did get is not reported: n2's and n3's carts, and the shared key that
    # n2's write resolved, its context covering n1's first write.
    assert {v.key for v in report.violations} == {"cart-n1", "motd", "visits"}, report.text
    assert all("n3" in v.text for v in report.violations), report.text


async def test_the_same_scenario_on_an_honest_cluster_passes_the_checker() -> None:
    async with cluster(n=3, memory=True) as running:
        history = History()
        await write_on_every_node(running, history)
        await settle(running, history, running.node_ids)
        report = check(history, await final_reads(running, history))
    assert report.ok, report.text
    assert report.keys == 6
