"""The fault control protocol of `cluster up --faults`: its requests, checked, and its links.

One newline-delimited JSON request per line, one reply per request, on the
loopback endpoint a running `replica cluster up --faults` serves; every
request carries the `token` of the cluster's state file (see
`fault_state_file`).  The requests:

    {"type": "partition", "groups": [["n1"], ["n2", "n3"]]}  cut exactly the links between
                                                             groups, heal every other one
    {"type": "isolate", "node": "n2"}                        cut every link from and to n2
    {"type": "cut", "from": "n1", "to": "n2"}                cut one direction as well
    {"type": "latency", "nodes": ["n1", "n2"], "delay_ms": 100, "jitter_ms": 20}
                                                             delay both directions (0: none)
    {"type": "heal"}                                         every link up, every latency gone
    {"type": "show"}                                         change nothing

Each is answered `<type>_ok` with the whole network as it now is: `cut`, the
cut links as `[from, to]` pairs, and `links`, one `{from, to, cut, delay_ms,
jitter_ms}` per directed link.  Errors use the node protocol's codes and shape
(`{"type": "error", "code": C, "text": ...}`): 10 for an unknown type; 12 for
a request that is not a JSON object, lacks a field, names a node the cluster
does not have, puts a node in two groups or in none, or is too long; 11 when
too many control connections are open; 13 when a proxy could not be changed;
1000 for a missing or wrong token.  A `msg_id` is answered as `in_reply_to`.

This module is pure: `replica fault` checks its request here before sending
it, and the endpoint checks it again, so both refuse the same things alike.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

NOT_SUPPORTED = 10
TEMPORARILY_UNAVAILABLE = 11
MALFORMED = 12
CRASH = 13
NOT_AUTHORISED = 1000

MAX_DELAY_MS = 60_000.0
TYPES = ("partition", "isolate", "cut", "latency", "heal", "show")

Link = tuple[str, str]


class FaultRequestError(Exception):
    """A request the endpoint refuses: `code` is the protocol's, `str()` one line why."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass(frozen=True, slots=True)
class FaultRequest:
    """A checked request: `links` are the directed links it acts on (for `latency`, both)."""

    type: str
    groups: tuple[tuple[str, ...], ...] = ()
    links: tuple[Link, ...] = ()
    delay_ms: float = 0.0
    jitter_ms: float = 0.0


def check_request(body: Any, node_ids: Sequence[str]) -> FaultRequest:
    """The request `body` means for a cluster of `node_ids`; FaultRequestError when none."""
    if not isinstance(body, dict):
        raise FaultRequestError(MALFORMED, "a request must be a JSON object")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise FaultRequestError(MALFORMED, "missing field 'type'")
    if kind not in TYPES:
        raise FaultRequestError(NOT_SUPPORTED, f"unknown type {kind!r} (known: {', '.join(TYPES)})")
    if kind == "partition":
        groups = _groups(body.get("groups"), node_ids)
        return FaultRequest(kind, groups=groups)
    if kind == "isolate":
        node = _node(body.get("node"), "node", node_ids)
        links = tuple(link for link in all_links(node_ids) if node in link)
        return FaultRequest(kind, links=links)
    if kind == "cut":
        source = _node(body.get("from"), "from", node_ids)
        target = _node(body.get("to"), "to", node_ids)
        if source == target:
            raise FaultRequestError(MALFORMED, f"a link joins two nodes, not {source!r} to itself")
        return FaultRequest(kind, links=((source, target),))
    if kind == "latency":
        pair = body.get("nodes")
        if not isinstance(pair, list) or len(pair) != 2:
            raise FaultRequestError(MALFORMED, "'nodes' must be a list of two node ids")
        a, b = (_node(node, "nodes", node_ids) for node in pair)
        if a == b:
            raise FaultRequestError(
                MALFORMED, f"latency is between two nodes, not {a!r} and itself"
            )
        delay = _milliseconds(body.get("delay_ms"), "delay_ms")
        jitter = _milliseconds(body.get("jitter_ms", 0), "jitter_ms")
        return FaultRequest(kind, links=((a, b), (b, a)), delay_ms=delay, jitter_ms=jitter)
    return FaultRequest(kind)


def all_links(node_ids: Sequence[str]) -> list[Link]:
    """Every directed link of the full mesh, in the file's node order."""
    return [(a, b) for a in node_ids for b in node_ids if a != b]


def split_groups(words: Sequence[str]) -> list[list[str]]:
    """`n1 / n2 n3` (as command-line words, `/` alone or inside a word) as groups of ids."""
    return [group.split() for group in " ".join(words).split("/")]


def parse_duration_ms(text: str) -> float:
    """`100ms`, `1s`, `1.5s` or a bare number of milliseconds; ValueError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*", text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (say 100ms, 1s or 100)")
    value = float(match.group(1)) * (1000.0 if match.group(2) == "s" else 1.0)
    if value > MAX_DELAY_MS:
        raise ValueError(f"{text!r} is longer than {MAX_DELAY_MS / 1000:g} s")
    return value


def describe_links(links: Sequence[dict[str, Any]], node_ids: Sequence[str]) -> list[str]:
    """Human lines for a reply's `links`: `n1 -> n2  cut`, `n1 <-> n3  latency 100 ms`.

    A pair whose two directions are alike is one `<->` line; a link with
    nothing wrong is not shown, and a network with nothing wrong is one line.
    """
    states = {(link["from"], link["to"]): _state(link) for link in links}
    lines: list[str] = []
    width = max((len(n) for n in node_ids), default=0)
    for i, a in enumerate(node_ids):
        for b in node_ids[i + 1 :]:
            there, back = states.get((a, b), ""), states.get((b, a), "")
            if there and there == back:
                lines.append(f"{a.ljust(width)} <-> {b.ljust(width)}  {there}")
                continue
            if there:
                lines.append(f"{a.ljust(width)} -> {b.ljust(width)}   {there}")
            if back:
                lines.append(f"{b.ljust(width)} -> {a.ljust(width)}   {back}")
    return lines or ["every link up, no latency"]


def _state(link: dict[str, Any]) -> str:
    parts = ["cut"] if link.get("cut") else []
    delay, jitter = link.get("delay_ms", 0), link.get("jitter_ms", 0)
    if delay or jitter:
        parts.append(f"latency {delay:g} ms" + (f" jitter {jitter:g} ms" if jitter else ""))
    return ", ".join(parts)


def _node(value: Any, field: str, node_ids: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise FaultRequestError(MALFORMED, f"{field!r} must be a node id, not {value!r}")
    if value not in node_ids:
        raise FaultRequestError(
            MALFORMED, f"unknown node {value!r} (the cluster has {', '.join(node_ids)})"
        )
    return value


def _groups(value: Any, node_ids: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list) or not all(isinstance(group, list) for group in value):
        raise FaultRequestError(MALFORMED, "'groups' must be a list of lists of node ids")
    seen: set[str] = set()
    for group in value:
        if not group:
            raise FaultRequestError(MALFORMED, "a group must name at least one node")
        for node in group:
            _node(node, "groups", node_ids)
            if node in seen:
                raise FaultRequestError(MALFORMED, f"node {node!r} is in two groups")
            seen.add(node)
    missing = [node for node in node_ids if node not in seen]
    if missing:
        raise FaultRequestError(MALFORMED, f"{', '.join(missing)} in no group")
    return tuple(tuple(group) for group in value)


def _milliseconds(value: Any, field: str) -> float:
    if type(value) not in (int, float) or not 0 <= value <= MAX_DELAY_MS:
        raise FaultRequestError(
            MALFORMED, f"{field!r} must be a number of ms from 0 to {MAX_DELAY_MS:g}, not {value!r}"
        )
    return float(value)
