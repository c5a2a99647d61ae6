"""Cluster scenarios with real node processes and a TCP proxy on every directed link.

Partitions are made by cutting proxies between the nodes, never inside a
node; clients always reach every node directly.  Every wait is for a
condition with a deadline, and a failure shows what the nodes last answered.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from tests.harness import JsonClient, ProxiedCluster, eventually, without_ids

NODES = ["n1", "n2", "n3"]
PARTITION_HOLD = 0.6  # more than ten 50 ms gossip ticks: one whole anti-entropy period
FLAP_SECONDS = 5.0
MAX_WRITES_PER_CLIENT = 400

Read = tuple[str, str, int | None]
"""(keyspace, key, read_timestamp): one read that every replica must answer alike."""


def hlc_now() -> int:
    """A timestamp in the nodes' hybrid-clock units, so it stays above any GC horizon."""
    return (time.time_ns() // 1_000_000) << 16


def request_for(read: Read) -> dict[str, Any]:
    keyspace, key, read_timestamp = read
    if keyspace == "mv":
        return {"type": "mv_read", "key": key}
    if keyspace == "kv":
        return {"type": "kv_get", "key": key}
    if keyspace == "lww":
        return {"type": "lww_read", "key": key}
    body: dict[str, Any] = {"type": "mvcc_get", "key": key}
    if read_timestamp is not None:
        body["read_timestamp"] = read_timestamp
    return body


async def snapshot(cluster: ProxiedCluster, node_id: str, reads: list[Read]) -> dict[Read, Any]:
    """The node's answers to `reads`, without message ids."""
    return {read: without_ids(await cluster.request(node_id, request_for(read))) for read in reads}


async def snapshots(
    cluster: ProxiedCluster, reads: list[Read], node_ids: list[str] = NODES
) -> dict[str, dict[Read, Any]]:
    return {node_id: await snapshot(cluster, node_id, reads) for node_id in node_ids}


def all_equal(views: dict[str, Any]) -> bool:
    first, *rest = views.values()
    return all(view == first for view in rest)


def visible(answer: dict[str, Any]) -> Any:
    """Just the values a read (or a write's reply) shows: what a client would act on."""
    if answer["type"] in ("mv_read_ok", "mv_write_ok", "kv_get_ok"):
        return [entry["value"] for entry in answer["values"]]
    if answer["type"] == "error":
        return ("error", answer["code"])
    return answer["value"]


def values_of(view: dict[Read, Any]) -> dict[Read, Any]:
    return {read: visible(answer) for read, answer in view.items()}


async def wait_for_links(cluster: ProxiedCluster, cut: set[tuple[str, str]]) -> None:
    """Every node's status shows exactly the links in `cut` as disconnected."""

    def matches(statuses: dict[str, dict[str, Any]]) -> bool:
        return all(
            peer["connected"] == ((node_id, peer["id"]) not in cut)
            for node_id, status in statuses.items()
            for peer in status["peers"]
        )

    await eventually(cluster.statuses, matches, f"status shows exactly {sorted(cut)} down")


def actor_of(mv_write_ok: dict[str, Any]) -> str:
    """Who the node names in the dots of its writes (its id, or its data dir's actor id)."""
    dot = mv_write_ok["vclock"]
    assert len(dot) == 1, f"not a first write: {mv_write_ok}"
    (actor,) = dot
    return str(actor)


def pending(statuses: dict[str, dict[str, Any]]) -> dict[tuple[str, str], int]:
    return {
        (node_id, peer["id"]): peer["pending"]
        for node_id, status in statuses.items()
        for peer in status["peers"]
    }


# -- a write reaches every node ---------------------------------------------------------------


async def test_a_write_at_one_node_is_visible_at_every_node(cluster: ProxiedCluster) -> None:
    reads: list[Read] = []
    actors: dict[str, str] = {}
    for index, origin in enumerate(NODES):
        key = f"from-{origin}"
        clock = [0, 0, 0]
        clock[index] = 1
        writes = [
            {"type": "mv_write", "key": key, "value": {"cart": [origin]}},
            {"type": "kv_put", "key": key, "value": origin, "clock": clock},
            {"type": "lww_write", "key": key, "value": origin},
            {"type": "mvcc_put", "key": key, "value": f"{origin}-v1"},
        ]
        for body in writes:
            reply = await cluster.request(origin, body)
            assert reply["type"] == f"{body['type']}_ok", reply
            if body["type"] == "mv_write":
                actors[origin] = actor_of(reply)
        reads += [("mv", key, None), ("kv", key, None), ("lww", key, None), ("mvcc", key, None)]

    views = await eventually(
        lambda: snapshots(cluster, reads),
        lambda views: all_equal(views) and all(a["type"] != "error" for a in views["n1"].values()),
        "every write visible at every node",
    )
    assert len(set(actors.values())) == len(NODES), actors
    for origin in NODES:
        key, actor = f"from-{origin}", actors[origin]
        assert views["n1"][("mv", key, None)] == {
            "type": "mv_read_ok",
            "values": [{"value": {"cart": [origin]}, "vclock": {actor: 1}, "dot": [actor, 1]}],
            "context": {actor: 1},
        }
        assert visible(views["n1"][("kv", key, None)]) == [origin]
        assert views["n1"][("lww", key, None)]["replica"] == origin
        assert visible(views["n1"][("mvcc", key, None)]) == f"{origin}-v1"


# -- status across a cut -----------------------------------------------------------------------


async def test_status_shows_a_cut_link_and_anti_entropy_routes_around_it(
    cluster: ProxiedCluster,
) -> None:
    await wait_for_links(cluster, set())
    await cluster.partitioner.cut_exactly([("n1", "n2")])
    await wait_for_links(cluster, {("n1", "n2")})

    reply = await cluster.request("n1", {"type": "mv_write", "key": "k", "value": "v"})
    assert reply["type"] == "mv_write_ok", reply
    # n1 cannot push to n2, and n3 does not forward what it merged; only n3's
    # anti-entropy with n2 can carry the write there.
    views = await eventually(
        lambda: snapshots(cluster, [("mv", "k", None)]),
        all_equal,
        "the write reaches n2 around the cut",
    )
    assert values_of(views["n2"]) == {("mv", "k", None): ["v"]}
    statuses = await cluster.statuses()
    assert pending(statuses)["n1", "n2"] == 1, statuses["n1"]

    await cluster.heal_all()
    await wait_for_links(cluster, set())
    await cluster.wait_quiet()


# -- a partition: both sides keep writing, the heal brings both back ----------------------------

KEY = "k"
SIDE = {"n1": "left", "n2": "right"}


async def write_both_sides(cluster: ProxiedCluster, base: int) -> dict[str, str]:
    """Concurrent writes on both sides of {n1} | {n2, n3}, at n1 and at n2, in every keyspace.

    Returns the actor each writer names in its MV dots.
    """
    actors = {}
    for node_id, side in SIDE.items():
        clock = [1, 0, 0] if node_id == "n1" else [0, 1, 0]
        replies = [
            await cluster.request(node_id, {"type": "mv_write", "key": KEY, "value": side}),
            await cluster.request(
                node_id, {"type": "lww_write", "key": KEY, "value": side, "timestamp": base}
            ),
            await cluster.request(
                node_id, {"type": "kv_put", "key": KEY, "value": side, "clock": clock}
            ),
        ]
        assert [r["type"] for r in replies] == ["mv_write_ok", "lww_write_ok", "kv_put_ok"]
        assert replies[2]["status"] == "written", replies[2]
        actors[node_id] = actor_of(replies[0])
    mvcc_puts = [
        ("n1", 100, "left-100", 1),
        ("n2", 200, "right-200", 1),
        ("n1", 300, "left-300", 2),
        ("n2", 300, "right-300", 2),
    ]
    for node_id, offset, value, version in mvcc_puts:
        body = {"type": "mvcc_put", "key": KEY, "value": value, "timestamp": base + offset}
        reply = await cluster.request(node_id, body)
        assert reply["type"] == "mvcc_put_ok", reply
        assert reply["version"] == version, reply
    return actors


MVCC_OFFSETS = [50, 100, 150, 200, 250, 300, None]


def partition_reads(base: int) -> list[Read]:
    reads: list[Read] = [("mv", KEY, None), ("lww", KEY, None), ("kv", KEY, None)]
    reads += [("mvcc", KEY, None if o is None else base + o) for o in MVCC_OFFSETS]
    return reads


def expected_values(
    base: int, mv: list[str], lww: str, mvcc: dict[int | None, Any]
) -> dict[Read, Any]:
    """What each read shows; `mvcc` maps a read timestamp's offset from `base` to its value."""
    expected: dict[Read, Any] = {("mv", KEY, None): mv, ("lww", KEY, None): lww}
    expected["kv", KEY, None] = mv
    for offset, value in mvcc.items():
        expected["mvcc", KEY, None if offset is None else base + offset] = value
    return expected


NONE = ("error", 20)


async def test_a_partition_keeps_both_sides_apart_and_the_heal_merges_them(
    cluster: ProxiedCluster,
) -> None:
    base = hlc_now()
    reads = partition_reads(base)
    left = expected_values(
        base,
        ["left"],
        "left",
        {50: NONE, 100: "left-100", 150: "left-100", 200: "left-100", 250: "left-100"}
        | {300: "left-300", None: "left-300"},
    )
    right = expected_values(
        base,
        ["right"],
        "right",
        {50: NONE, 100: NONE, 150: NONE, 200: "right-200", 250: "right-200"}
        | {300: "right-300", None: "right-300"},
    )
    healed = expected_values(
        base,
        ["left", "right"],
        "right",  # equal timestamps: the higher replica id wins
        {50: NONE, 100: "left-100", 150: "left-100", 200: "right-200", 250: "right-200"}
        | {300: "right-300", None: "right-300"},  # the same timestamp: the higher origin wins
    )

    await wait_for_links(cluster, set())
    await cluster.partition([{"n1"}, {"n2", "n3"}])
    cut = {("n1", "n2"), ("n2", "n1"), ("n1", "n3"), ("n3", "n1")}
    await wait_for_links(cluster, cut)
    actors = await write_both_sides(cluster, base)
    a1, a2 = actors["n1"], actors["n2"]

    async def values_everywhere() -> dict[str, dict[Read, Any]]:
        return {n: values_of(view) for n, view in (await snapshots(cluster, reads)).items()}

    await eventually(
        values_everywhere,
        lambda seen: seen["n2"] == right and seen["n3"] == right,
        "the majority side {n2, n3} converges",
    )
    await eventually(
        cluster.statuses,
        lambda s: pending(s)["n2", "n3"] == 0,
        "n3 acknowledges n2's writes",
    )
    await asyncio.sleep(PARTITION_HOLD)
    seen = await values_everywhere()
    assert seen == {"n1": left, "n2": right, "n3": right}, "a write crossed the cut"
    across_the_cut = {
        ("n1", "n2"): 4,
        ("n1", "n3"): 4,
        ("n2", "n1"): 4,
        ("n2", "n3"): 0,
        ("n3", "n1"): 0,
        ("n3", "n2"): 0,
    }
    await eventually(  # a repair round begun before n2 and n3 agreed may still be ending
        cluster.statuses,
        lambda s: pending(s) == across_the_cut,
        "only the writes across the cut pending",
    )

    await cluster.heal_all()
    views = await eventually(
        lambda: snapshots(cluster, reads),
        lambda views: all_equal(views) and values_of(views["n1"]) == healed,
        "every node shows both sides' writes, identically",
    )
    mv = views["n1"][("mv", KEY, None)]
    assert mv == {
        "type": "mv_read_ok",
        "values": [
            {"value": "left", "vclock": {a1: 1}, "dot": [a1, 1]},
            {"value": "right", "vclock": {a2: 1}, "dot": [a2, 1]},
        ],
        "context": {a1: 1, a2: 1},
    }
    assert views["n1"][("lww", KEY, None)] == {
        "type": "lww_read_ok",
        "value": "right",
        "timestamp": base,
        "replica": "n2",
    }
    kv = views["n1"][("kv", KEY, None)]["values"]
    assert sorted((e["value"], e["clock"][:2]) for e in kv) == [
        ("left", [1, 0]),
        ("right", [0, 1]),
    ]
    newest = views["n1"][("mvcc", KEY, None)]
    assert (newest["version"], newest["as_of_timestamp"]) == (3, base + 300)
    await cluster.wait_quiet()

    # Resolving at the node that wrote neither value replaces both everywhere.
    read = await cluster.request("n3", {"type": "mv_read", "key": KEY})
    body = {"type": "mv_write", "key": KEY, "value": "resolved", "context": read["context"]}
    reply = await cluster.request("n3", body)
    (resolved,) = reply["values"]
    a3 = resolved["dot"][0]
    assert a3 not in (a1, a2), reply
    assert resolved == {"value": "resolved", "vclock": {a1: 1, a2: 1, a3: 1}, "dot": [a3, 1]}
    await eventually(
        lambda: cluster.request_each({"type": "mv_read", "key": KEY}),
        lambda seen: all(r["values"] == [resolved] for r in seen.values()),
        "the resolving write replaces both siblings at every node",
    )


# -- a wiped node comes back through anti-entropy alone ------------------------------------------


async def test_a_killed_and_wiped_node_converges_through_anti_entropy(
    cluster: ProxiedCluster,
) -> None:
    reads: list[Read] = []
    for index, origin in enumerate(NODES):
        key = f"before-{origin}"
        clock = [0, 0, 0]
        clock[index] = 2
        await cluster.request(origin, {"type": "mv_write", "key": key, "value": origin})
        await cluster.request(
            origin, {"type": "kv_put", "key": key, "value": origin, "clock": clock}
        )
        await cluster.request(origin, {"type": "lww_write", "key": key, "value": origin})
        first = await cluster.request(origin, {"type": "mvcc_put", "key": key, "value": "v1"})
        await cluster.request(origin, {"type": "mvcc_put", "key": key, "value": "v2"})
        reads += [("mv", key, None), ("kv", key, None), ("lww", key, None)]
        reads += [("mvcc", key, first["timestamp"]), ("mvcc", key, None)]
        # three concurrent siblings of one key, one from each node
        body = {"type": "mv_write", "key": "shared", "value": origin, "context": {}}
        await cluster.request(origin, body)
    reads.append(("mv", "shared", None))

    await eventually(lambda: snapshots(cluster, reads), all_equal, "the cluster converges")
    await cluster.wait_quiet("nothing left pending for anyone, n3 included")

    await cluster.kill("n3")
    await cluster.restart("n3", wipe=True)
    # Nothing is pending for n3: every key it held can only come back by anti-entropy,
    # including its own writes, which n1 and n2 hold as merged (never forwarded) state.
    views = await eventually(
        lambda: snapshots(cluster, reads),
        all_equal,
        "the wiped node n3 gets every key back",
    )
    assert visible(views["n3"][("mv", "shared", None)]) == ["n1", "n2", "n3"]
    assert visible(views["n3"][("mv", "before-n3", None)]) == ["n3"]
    counts = await eventually(
        cluster.statuses,
        lambda s: all_equal({n: status["keys"] for n, status in s.items()}),
        "every node holds the same number of keys",
    )
    assert counts["n3"]["keys"] == {"mv": 4, "kv": 3, "mvcc": 3, "lww": 3, "counter": 0}


async def test_writes_made_while_a_node_is_down_reach_it_after_a_wiped_restart(
    cluster: ProxiedCluster,
) -> None:
    before: list[Read] = [("mv", "before", None), ("lww", "before", None)]
    await cluster.request("n1", {"type": "mv_write", "key": "before", "value": 1})
    await cluster.request("n2", {"type": "lww_write", "key": "before", "value": 2})
    await eventually(lambda: snapshots(cluster, before), all_equal, "the cluster converges")
    await cluster.wait_quiet()

    await cluster.kill("n3")
    reads = list(before)
    for index, origin in enumerate(["n1", "n2"]):
        key = f"down-{origin}"
        clock = [0, 0, 0]
        clock[index] = 1
        await cluster.request(origin, {"type": "mv_write", "key": key, "value": origin})
        await cluster.request(
            origin, {"type": "kv_put", "key": key, "value": origin, "clock": clock}
        )
        await cluster.request(origin, {"type": "lww_write", "key": key, "value": origin})
        await cluster.request(origin, {"type": "mvcc_put", "key": key, "value": origin})
        reads += [("mv", key, None), ("kv", key, None), ("lww", key, None), ("mvcc", key, None)]
    await cluster.restart("n3", wipe=True)

    await eventually(lambda: snapshots(cluster, reads), all_equal, "n3 catches up")
    await cluster.wait_quiet()


async def test_a_wiped_node_writing_before_it_caught_up_loses_no_write(
    cluster: ProxiedCluster,
) -> None:
    reads: list[Read] = [("mv", "shared", None), ("mv", "mine", None)]
    for origin in NODES:
        body = {"type": "mv_write", "key": "shared", "value": origin, "context": {}}
        await cluster.request(origin, body)
    old = await cluster.request("n3", {"type": "mv_write", "key": "mine", "value": "old"})
    await eventually(lambda: snapshots(cluster, reads), all_equal, "the cluster converges")
    await cluster.wait_quiet()

    # Restarted alone and empty, n3 writes before anti-entropy can tell it what it
    # wrote in its previous life: its new dots must not collide with the old ones.
    await cluster.partition([{"n3"}, {"n1", "n2"}])
    await cluster.kill("n3")
    await cluster.restart("n3", wipe=True)
    status = await cluster.request("n3", {"type": "status"})
    assert status["keys"] == {"mv": 0, "kv": 0, "mvcc": 0, "lww": 0, "counter": 0}, status
    new = await cluster.request("n3", {"type": "mv_write", "key": "mine", "value": "new"})
    await cluster.request("n3", {"type": "mv_write", "key": "shared", "value": "n3-again"})
    assert visible(new) == ["new"], new
    new_dot, old_dot = new["values"][0]["dot"], old["values"][0]["dot"]
    assert new_dot != old_dot, "the wiped node reused a dot of its previous life"

    await cluster.heal_all()
    views = await eventually(lambda: snapshots(cluster, reads), all_equal, "n3 converges")
    assert sorted(visible(views["n1"][("mv", "shared", None)])) == ["n1", "n2", "n3", "n3-again"]
    assert sorted(visible(views["n1"][("mv", "mine", None)])) == ["new", "old"]
    await cluster.wait_quiet()


async def test_a_killed_node_restarts_with_every_write_it_acknowledged(
    cluster: ProxiedCluster,
) -> None:
    # Alone behind a partition, n3 can get its writes back only from its own disk.
    await cluster.partition([{"n3"}, {"n1", "n2"}])
    first = await cluster.request("n3", {"type": "mv_write", "key": "k", "value": "v1"})
    await cluster.request("n3", {"type": "kv_put", "key": "k", "value": "v1", "clock": [0, 0, 1]})
    lww = await cluster.request("n3", {"type": "lww_write", "key": "k", "value": "v1"})
    put = await cluster.request("n3", {"type": "mvcc_put", "key": "k", "value": "v1"})
    await cluster.request("n3", {"type": "mvcc_put", "key": "k", "value": "v2"})
    reads: list[Read] = [("mv", "k", None), ("kv", "k", None), ("lww", "k", None)]
    reads += [("mvcc", "k", put["timestamp"]), ("mvcc", "k", None)]
    before = await snapshot(cluster, "n3", reads)

    await cluster.kill("n3")
    await cluster.restart("n3", wipe=False)
    assert await snapshot(cluster, "n3", reads) == before
    # After kill -9 the node writes under a new incarnation of its actor, which
    # supersedes the first write (docs/durability.md, D3).
    again = await cluster.request("n3", {"type": "mv_write", "key": "k", "value": "v2"})
    (actor,) = first["vclock"]
    (new_actor,) = [node for node in again["vclock"] if node != actor]
    assert new_actor.startswith("n3~"), again
    assert again["vclock"] == {actor: 1, new_actor: 1}, again
    assert [entry["value"] for entry in again["values"]] == ["v2"], again
    later = await cluster.request("n3", {"type": "lww_write", "key": "k2", "value": 0})
    assert later["timestamp"] > lww["timestamp"], "the hybrid clock went back after a restart"

    await cluster.heal_all()
    reads.append(("lww", "k2", None))
    await eventually(lambda: snapshots(cluster, reads), all_equal, "the cluster converges")


# -- flapping partitions under concurrent writers --------------------------------------------------

FLAP_KEYS = ["a", "b", "c", "d"]
WRITERS = 4


@dataclass(frozen=True, slots=True)
class AckedWrite:
    key: str
    value: str
    node: str
    dot: tuple[str, int]
    past: dict[str, int]  # what the write had seen: exactly the dots it supersedes

    def supersedes(self, other: AckedWrite) -> bool:
        node, counter = other.dot
        return other is not self and self.past.get(node, 0) >= counter


def past_of(reply: dict[str, Any], context: dict[str, int] | None, dot: tuple[str, int]) -> Any:
    """The new sibling's past: the context sent, or without one the node's local context.

    A write without context has `past` = the local context and counter = that
    context's own entry + 1, so the reply's `vclock` is the past with the
    writer's entry raised by exactly one.
    """
    if context is not None:
        return dict(context)
    past = dict(reply["vclock"])
    node, counter = dot
    assert past[node] == counter, reply
    if counter == 1:
        del past[node]
    else:
        past[node] = counter - 1
    return past


async def write_randomly(
    cluster: ProxiedCluster, index: int, seed: int, stop_at: float, acked: list[AckedWrite]
) -> None:
    rng = random.Random(seed)
    clients: dict[str, JsonClient] = {n: await cluster.nodes[n].connect() for n in NODES}
    last_context: dict[tuple[str, str], dict[str, int]] = {}
    try:
        for seq in range(MAX_WRITES_PER_CLIENT):
            if time.monotonic() > stop_at:
                return
            node, key = rng.choice(NODES), rng.choice(FLAP_KEYS)
            value = f"w{index}-{seq}"
            body: dict[str, Any] = {"type": "mv_write", "key": key, "value": value}
            context = last_context.get((node, key)) if rng.random() < 0.5 else None
            if context is not None:
                body["context"] = context
            reply = await clients[node].request(body)
            assert reply["type"] == "mv_write_ok", reply
            last_context[node, key] = reply["context"]
            (own,) = [entry for entry in reply["values"] if entry["value"] == value]
            dot = (own["dot"][0], own["dot"][1])
            acked.append(AckedWrite(key, value, node, dot, past_of(reply, context, dot)))
            await asyncio.sleep(rng.uniform(0.005, 0.02))
    finally:
        for client in clients.values():
            await client.close()


async def flap_links(
    cluster: ProxiedCluster, seed: int, stop_at: float, cuts: list[set[tuple[str, str]]]
) -> None:
    """Until `stop_at`: every 200 to 500 ms a random partition or a random set of one-way cuts."""
    rng = random.Random(seed)
    links = sorted(cluster.proxies)
    while time.monotonic() < stop_at:
        if rng.random() < 0.5:
            group = {node: rng.randrange(3) for node in NODES}
            cut = {(a, b) for a, b in links if group[a] != group[b]}
        else:
            cut = {link for link in links if rng.random() < 0.3}
        await cluster.partitioner.cut_exactly(cut)
        cuts.append(cut)
        await asyncio.sleep(rng.uniform(0.2, 0.5))


async def test_flapping_partitions_lose_no_acknowledged_write(cluster: ProxiedCluster) -> None:
    seed = int(os.environ.get("REPLICA_FLAP_SEED", "20240611"))  # to replay another schedule
    stop_at = time.monotonic() + FLAP_SECONDS
    acked: list[AckedWrite] = []
    cuts: list[set[tuple[str, str]]] = []
    await asyncio.gather(
        flap_links(cluster, seed, stop_at, cuts),
        *(write_randomly(cluster, i, seed + 1 + i, stop_at, acked) for i in range(WRITERS)),
    )
    assert sum(1 for cut in cuts if cut) >= 5, cuts
    assert len(acked) >= 100, len(acked)

    await cluster.heal_all()
    await cluster.wait_quiet()
    reads: list[Read] = [("mv", key, None) for key in FLAP_KEYS]
    views = await eventually(
        lambda: snapshots(cluster, reads), all_equal, "identical mv_read for every key"
    )

    dots = [(w.key, w.dot) for w in acked]
    assert len(set(dots)) == len(dots), "two acknowledged writes of a key got the same dot"
    actors = {w.node: w.dot[0] for w in acked}
    assert all(w.dot[0] == actors[w.node] for w in acked), "a node changed its actor"
    assert len(set(actors.values())) == len(actors), f"nodes share an actor: {actors}"
    written = {(w.key, w.dot): w.value for w in acked}
    shown = {
        (key, (entry["dot"][0], entry["dot"][1])): entry["value"]
        for (_, key, _), answer in views["n1"].items()
        for entry in answer["values"]
    }
    unknown = {k: v for k, v in shown.items() if written.get(k) != v}
    assert not unknown, f"values no acknowledged write made: {unknown}"

    lost, resurrected = [], []
    for write in acked:
        superseded_by = [o for o in acked if o.key == write.key and o.supersedes(write)]
        is_shown = shown.get((write.key, write.dot)) == write.value
        if superseded_by and is_shown:
            resurrected.append((write, superseded_by[0]))
        elif not superseded_by and not is_shown:
            lost.append(write)
    assert not lost, f"seed {seed}: {len(lost)} of {len(acked)} writes lost, e.g. {lost[:5]}"
    assert not resurrected, f"seed {seed}: superseded writes still shown: {resurrected[:5]}"
