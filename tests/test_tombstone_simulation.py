"""Tombstone collection under every delivery order: three in-process nodes on a simulated network.

Each directed link is a connection: one FIFO queue of the dialler's messages
and one of the answers to them.  A schedule drawn by Hypothesis interleaves
client writes and deletes, gossip ticks, deliveries from any queue, and link
resets; a reset may leave the old connection's unread messages to arrive
after the new connection's, as a real socket can.  At every step, a dot a
node knew to be gone (its context covers it, it shows no such sibling) must
never be shown by that node again: collection drops that knowledge with the
key, so only the protocol can keep a deleted value from coming back.  Once
the schedule ends and the links stay up, every key holding only a tombstone
is collected and the nodes agree.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.crdt import registry
from replica.node.router import Node
from replica.session import Session

IDS = ("n1", "n2", "n3")
KEYS = ("a", "b")
Dot = tuple[str, int]


@dataclass
class Connection:
    dialler: str
    acceptor: str
    requests: deque[bytes] = field(default_factory=deque)
    replies: deque[bytes] = field(default_factory=deque)
    current: bool = True


class Network:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 0.0
        self.nodes = {n: Node(n, list(IDS)) for n in IDS}
        self.links: dict[tuple[str, str], list[Connection]] = {}
        for node_id, node in self.nodes.items():
            replicator = node.replicator
            assert replicator is not None
            replicator.outbox = self._outbox(node_id)
            replicator.tombstones.clock = lambda: self.now
            replicator.clock = lambda: self.now
            replicator.tracker.resend_after = 1e9  # resets requeue; no clock-driven resends
        for a in IDS:
            for b in IDS:
                if a != b:
                    self.links[(a, b)] = []
                    self._open(a, b)
        self.gone: dict[str, set[tuple[str, Dot]]] = {n: set() for n in IDS}
        self.counter = 0

    def _outbox(self, src: str) -> Any:
        def send(dest: str, line: bytes) -> bool:
            self.links[(src, dest)][-1].requests.append(line)
            return True

        return send

    def _open(self, a: str, b: str) -> None:
        self.links[(a, b)].append(Connection(a, b))
        self.nodes[b].peer_link(a, opened=True)
        replicator = self.nodes[a].replicator
        assert replicator is not None
        replicator.link_up(b)

    def reset(self, a: str, b: str, keep_unread: bool) -> None:
        old = self.links[(a, b)][-1]
        old.current = False
        old.replies.clear()
        if not keep_unread:
            old.requests.clear()
        replicator = self.nodes[a].replicator
        assert replicator is not None
        replicator.link_down(b)
        self._open(a, b)
        self._close_drained()

    def _close_drained(self) -> None:
        for (a, b), connections in self.links.items():
            for connection in [c for c in connections if not c.current and not c.requests]:
                connections.remove(connection)
                self.nodes[b].peer_link(a, opened=False)

    def deliverable(self) -> list[tuple[Connection, bool]]:
        out = []
        for connections in self.links.values():
            for connection in connections:
                if connection.requests:
                    out.append((connection, True))
                if connection.replies:
                    out.append((connection, False))
        return out

    def deliver(self, connection: Connection, request: bool) -> None:
        if request:
            line = connection.requests.popleft()
            session = Session(peer=connection.dialler)
            reply = self.nodes[connection.acceptor].handle_line(line, session)
            if isinstance(reply, bytes) and connection.current:
                connection.replies.append(reply)
            self._close_drained()
        else:
            line = connection.replies.popleft()
            self.nodes[connection.dialler].handle_line(line, Session(peer=connection.acceptor))

    def tick(self, node_id: str) -> None:
        self.now += 0.5
        replicator = self.nodes[node_id].replicator
        assert replicator is not None
        replicator.tick()
        replicator.push()

    def client(self, node_id: str, key: str, delete: bool, blind: bool) -> None:
        node = self.nodes[node_id]
        state = node.keyspaces.states["mv"].get(key)
        context = {} if state is None or blind else state.context()
        if delete:
            body: dict[str, Any] = {"type": "mv_delete", "key": key, "context": context}
        else:
            self.counter += 1
            body = {"type": "mv_write", "key": key, "value": self.counter, "context": context}
        reply = orjson.loads(node.handle_line(orjson.dumps(body)))  # type: ignore[arg-type]
        assert reply["type"] == f"{body['type']}_ok", reply

    def check(self) -> None:
        """No node shows a dot it once knew to be gone."""
        for node_id, node in self.nodes.items():
            for key in KEYS:
                state = node.keyspaces.states["mv"].get(key)
                shown = set() if state is None else {s.dot for s in state}
                back = {(key, dot) for dot in shown} & self.gone[node_id]
                assert not back, f"{node_id} shows {back} again"
                if state is not None:
                    context = state.context()
                    for dot in _dots(context):
                        if dot not in shown:
                            self.gone[node_id].add((key, dot))


def _dots(context: dict[str, int]) -> list[Dot]:
    return [(actor, n) for actor, top in context.items() for n in range(1, top + 1)]


def run(seed: int, steps: int) -> Network:
    rng = random.Random(seed)
    net = Network(rng)
    for _ in range(steps):
        roll = rng.random()
        pending = net.deliverable()
        if roll < 0.45 and pending:
            net.deliver(*rng.choice(pending))
        elif roll < 0.6:
            key = rng.choice(KEYS)
            net.client(rng.choice(IDS), key, delete=rng.random() < 0.4, blind=rng.random() < 0.2)
        elif roll < 0.93:
            net.tick(rng.choice(IDS))
        else:
            a, b = rng.sample(IDS, 2)
            net.reset(a, b, keep_unread=rng.random() < 0.7)
        net.check()
    return net


def quiesce(net: Network) -> None:
    """Links stay up: deliver everything and tick every node until nothing moves."""
    for _ in range(400):
        while pending := net.deliverable():
            net.deliver(*net.rng.choice(pending))
            net.check()
        for node_id in IDS:
            net.tick(node_id)
        net.check()
        if not net.deliverable() and _settled(net):
            return
    raise AssertionError("the nodes did not settle")


def _settled(net: Network) -> bool:
    states = [{k: n.keyspaces.states["mv"].get(k) for k in KEYS} for n in net.nodes.values()]
    only = registry.MV.only_tombstone
    assert only is not None
    no_tombstones = not any(only(s) for node in states for s in node.values() if s is not None)
    return no_tombstones and all(s == states[0] for s in states)


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(20, 400))
async def test_no_deleted_value_comes_back_and_every_tombstone_goes(seed: int, steps: int) -> None:
    net = run(seed, steps)
    quiesce(net)
