"""`converge`: how long a partitioned cluster takes to agree again, and what gossip costs.

Cuts n1 off from the other nodes, writes the same keys once on each side (so
every key ends with two siblings), heals the partition, and measures the
seconds until every node holds identical siblings for every key (checked by
status, then by a sample of reads, then by reading every key on every node),
and the gossip bytes all nodes sent after the heal per key, against the
key's final state as gossip carries it.

Targets: 10,000 divergent keys converge within 2 s of the heal, and gossip
costs at most twice each key's serialized state.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .clients import READ_CONNECTIONS, READ_WINDOW, spread
from .options import count_option
from .profiler import Profiler
from .report import BenchError, Body, Report, Target, row, seconds_text
from .session import POLL_SECONDS, LinkStats, Session, link_name
from .workload import key_name, value_for

CONVERGE_SECONDS_LIMIT = 2.0
GOSSIP_RATIO_LIMIT = 2.0
SAMPLE_KEYS = 500  # read on every node once status says the nodes agree
QUIESCE_TIMEOUT = 10.0


def expected_values(actors: Sequence[str], index: int, size: int) -> list[Body]:
    """`mv_read`'s values after the heal: each writer's one write, ordered by dot.

    `actors` are the names the writers' dots carry, as their write replies
    showed them: a node id, or a node id with its data dir's incarnation
    after a `~`.
    """
    return [
        {"value": value_for(_node_of(actor), index, size), "vclock": {actor: 1}, "dot": [actor, 1]}
        for actor in sorted(actors)
    ]


def _node_of(actor: str) -> str:
    return actor.split("~", 1)[0]


def wire_state(values: Sequence[Body]) -> list[Body]:
    """A read's siblings as `mv_merge` carries them: the past is the vclock without the dot."""
    state = []
    for v in values:
        node, counter = v["dot"]
        past = dict(v["vclock"])
        if counter <= 1:
            past.pop(node, None)
        else:
            past[node] = counter - 1
        state.append({"value": v["value"], "dot": v["dot"], "past": past})
    return state


async def write_side(s: Session, node_id: str, keys: int, args: argparse.Namespace) -> str:
    """Write every key once at `node_id` without a context; returns the actor of its dots.

    Every reply must be the key's first write: one dot, counter 1, of one
    actor that names this node.
    """
    bodies = [
        {"type": "mv_write", "key": key_name(i), "value": value_for(node_id, i, args.value_bytes)}
        for i in range(keys)
    ]
    conns = await s.connections(node_id, args.connections)
    replies = await spread(conns, bodies, args.window)
    actor = next(iter(replies[0].get("vclock") or {"?": 1}))
    if _node_of(actor) != node_id:
        raise BenchError(f"a write at {node_id} made a dot of another node: {replies[0]}")
    bad = [r for r in replies if r.get("type") != "mv_write_ok" or r.get("vclock") != {actor: 1}]
    if bad:
        raise BenchError(f"{len(bad)} of {len(replies)} writes at {node_id} went wrong: {bad[0]}")
    return actor


async def read_mismatches(
    s: Session, indices: Sequence[int], actors: Sequence[str], size: int
) -> tuple[dict[str, int], list[list[Body]]]:
    """Read `indices` on every node; keys that differ from the expected siblings, per node.

    Every node is compared with the exact expected state, which implies they
    are identical to each other.  Also returns the first node's reads.
    """
    bodies = [{"type": "mv_read", "key": key_name(i)} for i in indices]

    async def read(node_id: str) -> list[Body]:
        return await spread(await s.connections(node_id, READ_CONNECTIONS), bodies, READ_WINDOW)

    per_node = await asyncio.gather(*(read(node_id) for node_id in s.ids))
    wrong: dict[str, int] = {}
    for node_id, replies in zip(s.ids, per_node, strict=True):
        count = sum(
            1
            for i, reply in zip(indices, replies, strict=True)
            if reply.get("values") != expected_values(actors, i, size)
        )
        if count:
            wrong[node_id] = count
    return wrong, [r["values"] for r in per_node[0]]


@dataclass
class HealTimes:
    """Seconds after the heal at which the status poll first saw each thing.

    `drained` is per directed link (`n1>n2`: what n1 sends n2): when the
    sender had nothing pending for that peer any more, every delta sent and
    acknowledged.  `slowest_status` is each node's longest status answer
    during the heal, as [seconds, asked at]: the external sign of a busy event
    loop (or, when commits are synchronous, of replies held for a commit).
    """

    all_two_siblings: float | None = None
    converged: float | None = None
    verified: float | None = None
    quiescent: float | None = None
    drained: dict[str, float] = field(default_factory=dict)
    slowest_status: dict[str, list[float]] = field(default_factory=dict)
    failed_checks: int = 0

    def note(self, s: Session, statuses: dict[str, Body], healed_at: float) -> float:
        """Record what this poll saw; returns its time, in seconds after the heal."""
        now = time.monotonic() - healed_at
        for node_id, status in statuses.items():
            for peer in status["peers"]:
                if peer["connected"] and peer["pending"] == 0:
                    self.drained.setdefault(link_name(node_id, peer["id"]), now)
        for node_id, (asked, latency) in s.latency.items():
            if latency > self.slowest_status.get(node_id, [0.0])[0]:
                self.slowest_status[node_id] = [latency, asked - healed_at]
        return now


def _all_keys_two_siblings(statuses: dict[str, Body], keys: int) -> bool:
    """What status can tell: every node has every key and none has more than 2 siblings."""
    return all(
        st["keys"]["mv"] == keys and st["max_siblings"]["mv"] == 2 for st in statuses.values()
    )


async def await_sampled_convergence(
    s: Session, keys: int, actors: Sequence[str], size: int, healed_at: float, times: HealTimes
) -> dict[str, Body]:
    """Poll until status and a random sample of reads say every node has converged.

    Status only shows key counts and the largest sibling count, which every
    node reaches before its last keys get their second sibling (here every
    node even has every key before the heal); so a passing status is checked
    against a random sample of reads on every node, whose end stops the clock
    (`times.converged`).  Returns the statuses of that moment.
    """
    rng = random.Random(1)
    while True:
        statuses = await s.status()
        now = times.note(s, statuses, healed_at)
        if _all_keys_two_siblings(statuses, keys):
            if times.all_two_siblings is None:
                times.all_two_siblings = now
            sample = sorted(rng.sample(range(keys), min(SAMPLE_KEYS, keys)))
            wrong, _ = await read_mismatches(s, sample, actors, size)
            if not wrong:
                times.converged = time.monotonic() - healed_at
                return statuses
            times.failed_checks += 1
        await asyncio.sleep(POLL_SECONDS)


async def await_quiescence(s: Session, healed_at: float, times: HealTimes) -> dict[str, Body]:
    """Poll until no node has anything pending for any peer (every delta acknowledged)."""
    deadline = time.monotonic() + QUIESCE_TIMEOUT
    while True:
        statuses = await s.status()
        now = times.note(s, statuses, healed_at)
        if all(p["pending"] == 0 for st in statuses.values() for p in st["peers"]):
            times.quiescent = now
            return statuses
        if time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(POLL_SECONDS)


def gossip_bytes(before: dict[str, Body], after: dict[str, Body]) -> dict[str, int]:
    return {n: after[n]["gossip_bytes_sent"] - before[n]["gossip_bytes_sent"] for n in after}


def traffic_by_type(stats: dict[str, LinkStats]) -> dict[str, dict[str, list[int]]]:
    """Every link's traffic summed: direction → type → [lines, bytes]."""
    out: dict[str, dict[str, list[int]]] = {"sent": {}, "replies": {}}
    for link in stats.values():
        for direction in out:
            for name, (lines, size, _, _) in link[direction].items():
                entry = out[direction].setdefault(name, [0, 0])
                entry[0] += lines
                entry[1] += size
    return out


@dataclass
class LinkTimeline:
    """One healed link, in seconds after the heal, from the proxy's clock and the status poll."""

    up: float | None
    first_merge: float | None
    last_merge: float | None
    last_ack: float | None
    drained: float | None
    bytes_sent: int


def link_timelines(
    stats: dict[str, LinkStats], links: Sequence[str], times: HealTimes, healed_at: float
) -> dict[str, LinkTimeline]:
    """Each healed link's timeline: the proxy saw the times, the status poll saw `drained`."""

    def since(t: float | None) -> float | None:
        return None if t is None else t - healed_at

    def merges(direction: Body, index: int, pick: Callable[..., float]) -> float | None:
        found = [
            v[index] for name, v in direction.items() if name.endswith(("_merge", "_merge_ok"))
        ]
        return since(pick(found)) if found else None

    out = {}
    for link in links:
        st = stats[link]
        out[link] = LinkTimeline(
            up=since(st["accepted"][0]) if st["accepted"] else None,
            first_merge=merges(st["sent"], 2, min),
            last_merge=merges(st["sent"], 3, max),
            last_ack=merges(st["replies"], 3, max),
            drained=times.drained.get(link),
            bytes_sent=sum(v[1] for v in st["sent"].values()),
        )
    return out


async def run(args: argparse.Namespace, s: Session) -> Report:
    """Cut n1 off, write every key on both sides, heal, and measure the way back."""
    first, rest = s.ids[0], s.ids[1:]
    partition = s.links_between([first], rest)
    timeline, actors = await _diverge(args, s, partition, first, rest)
    return await _heal(args, s, partition, actors, timeline)


async def _diverge(
    args: argparse.Namespace, s: Session, partition: list[str], first: str, rest: list[str]
) -> tuple[dict[str, float], list[str]]:
    """Partition, write every key at `first` and at `rest[0]`, let the majority side agree.

    Returns the phase times and the actors of the two writers' dots.
    """
    timeline: dict[str, float] = {}
    s.phase = "partitioning"
    started = time.monotonic()
    await s.cut(partition)
    await s.wait_links(lambda a, b: first not in (a, b))
    timeline["partition"] = time.monotonic() - started

    s.phase = "writing on both sides"
    started = time.monotonic()
    actors = await asyncio.gather(*(write_side(s, w, args.keys, args) for w in (first, rest[0])))
    written = time.monotonic()
    timeline["writes"] = written - started

    s.phase = "waiting for the majority side to converge"
    await _await_majority(s, rest, args.keys)
    timeline["majority"] = time.monotonic() - written
    return timeline, list(actors)


async def _heal(
    args: argparse.Namespace,
    s: Session,
    partition: list[str],
    actors: list[str],
    timeline: dict[str, float],
) -> Report:
    """Heal and poll until converged, quiescent and verified; gossip bytes from the heal on."""
    assert s.proxy is not None
    s.phase = "healing and waiting for convergence"
    before = await s.status()
    await s.proxy.reset()
    profiler = Profiler(Path(args.profile), s.children) if args.profile else None
    if profiler is not None:
        profiler.start(s.nodes.values())
    healed_at = time.monotonic()
    await s.heal(partition)
    times = HealTimes()
    while True:
        at_convergence = await await_sampled_convergence(
            s, args.keys, actors, args.value_bytes, healed_at, times
        )
        final = await await_quiescence(s, healed_at, times)
        if profiler is not None:
            await profiler.stop()
        stats = await s.proxy.stats()
        # every key on every node, read only now so the long check blurs no timing
        wrong, reads = await read_mismatches(s, range(args.keys), actors, args.value_bytes)
        if not wrong:
            times.verified = time.monotonic() - healed_at
            break
        times.failed_checks += 1

    state_sizes = [len(orjson.dumps(wire_state(values))) for values in reads]
    return converge_report(
        args,
        timeline=timeline,
        times=times,
        sent_at_convergence=gossip_bytes(before, at_convergence),
        sent_final=gossip_bytes(before, final),
        state_size=sum(state_sizes) / len(state_sizes),
        by_type=traffic_by_type(stats),
        links=link_timelines(stats, partition, times, healed_at),
        profile=profiler.summary() if profiler is not None else [],
    )


async def _await_majority(s: Session, majority: Sequence[str], keys: int) -> None:
    """Until every majority node holds every key and the writer has nothing pending for them."""
    writer = majority[0]
    while True:
        statuses = await s.status()
        holds = all(statuses[n]["keys"]["mv"] == keys for n in majority)
        pending = sum(p["pending"] for p in statuses[writer]["peers"] if p["id"] in majority)
        if holds and pending == 0:
            return
        await asyncio.sleep(POLL_SECONDS)


def converge_report(
    args: argparse.Namespace,
    *,
    timeline: dict[str, float],
    times: HealTimes,
    sent_at_convergence: dict[str, int],
    sent_final: dict[str, int],
    state_size: float,
    by_type: dict[str, dict[str, list[int]]],
    links: dict[str, LinkTimeline],
    profile: list[str],
) -> Report:
    keys = args.keys
    total = sum(sent_final.values())
    per_key = total / keys
    ratio = per_key / state_size
    assert times.converged is not None
    names = ("keys", "nodes", "gossip_interval_ms", "keyspace", "value_bytes")
    params = {name: getattr(args, name) for name in (*names, "connections", "window", "memory")}
    figures = {
        "timeline_s": timeline,
        "writes_per_s": 2 * keys / timeline["writes"],
        "after_heal_s": vars(times),
        "healed_links_s": {link: vars(t) for link, t in links.items()},
        "gossip_bytes_at_convergence": sent_at_convergence,
        "gossip_bytes": sent_final,
        "gossip_bytes_per_key": per_key,
        "state_bytes_per_key": state_size,
        "gossip_to_state_ratio": ratio,
        "link_traffic_by_type": by_type,
        "profile": profile,
    }
    storage = "in memory" if args.memory else "on disk (data_dir in the temp dir)"
    lines = [
        f"converge: {keys} {args.keyspace} keys written on both sides of {{n1}} | "
        f"{{n2..n{args.nodes}}}, {args.value_bytes}-byte values, gossip every "
        f"{args.gossip_interval_ms} ms, nodes {storage}",
        "",
        "phase                                           seconds",
        row("partition n1 (links seen down)", f"{timeline['partition']:.3f}"),
        row(
            f"writes: {keys} at n1 and at n2",
            f"{timeline['writes']:.3f}",
            f"{figures['writes_per_s']:,.0f} writes/s, {args.connections} conns x "
            f"{args.window} in flight per node",
        ),
        row("majority side converged, after the writes", f"{timeline['majority']:.3f}"),
        "after the heal:",
        row("  status: all keys, 2 siblings max, everywhere", seconds_text(times.all_two_siblings)),
        row(f"  converged (status + {SAMPLE_KEYS}-key sample)", seconds_text(times.converged)),
        row("  quiescent (every delta acknowledged)", seconds_text(times.quiescent)),
        row("  verified (every key on every node)", seconds_text(times.verified)),
        "  slowest status answer (busy loop, or held for a commit):",
        *[
            row(f"    {n}", f"{t * 1000:.0f} ms", f"asked at {at:.3f}")
            for n, (t, at) in sorted(times.slowest_status.items())
        ],
        "  healed link      up   1st merge  last merge  last ack   drained      bytes  per key",
        *_link_rows(links, keys),
        "",
        "gossip after the heal                               bytes  per key",
        *[row(f"sent by {n}", f"{b:,}", f"{b / keys:.1f}") for n, b in sorted(sent_final.items())],
        row("sent by all nodes (status gossip_bytes_sent)", f"{total:,}", f"{per_key:.1f}"),
        row("key state at the end (2 siblings, orjson)", "", f"{state_size:.1f}"),
        "on the links (proxies), by message type     messages      bytes  per key",
        *_type_rows(by_type, keys),
        *(["", "profile from the heal to quiescence (py-spy):", *profile] if profile else []),
    ]
    targets = [
        Target("seconds to converge after the heal", times.converged, CONVERGE_SECONDS_LIMIT, "s"),
        Target("gossip bytes per key / key state size", ratio, GOSSIP_RATIO_LIMIT, "ratio"),
    ]
    return Report("converge", params, figures, lines, targets)


def _link_rows(links: dict[str, LinkTimeline], keys: int) -> list[str]:
    return [
        f"  {link:<10}{seconds_text(t.up):>9}{seconds_text(t.first_merge):>12}"
        f"{seconds_text(t.last_merge):>12}{seconds_text(t.last_ack):>10}{seconds_text(t.drained):>10}"
        f"{t.bytes_sent:>11,}  {t.bytes_sent / keys:.1f}"
        for link, t in links.items()
    ]


def _type_rows(by_type: dict[str, dict[str, list[int]]], keys: int) -> list[str]:
    out = []
    for direction, types in by_type.items():
        for name, (count, size) in sorted(types.items(), key=lambda kv: -kv[1][1]):
            out.append(f"  {direction + ' ' + name:<36}{count:>10,}{size:>11,}  {size / keys:.1f}")
    return out


def add_parser(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    converge = commands.add_parser(
        "converge",
        parents=[common],
        help="partition, write both sides, heal: time and bytes to converge",
        description="Cut n1 off, write the same keys at n1 and n2, heal, and measure "
        "the seconds and gossip bytes until every node holds every key with both siblings.",
    )
    count_option(converge, "--keys", 10_000, "keys written on each side", "KEYS")
    converge.set_defaults(run=run)
