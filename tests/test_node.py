"""The node in-process: routing, envelopes, the msg_id counter, every handler and its errors.

These drive `Node.handle_line` with real encoded lines, the same entry point
the transports use; the transports themselves are tested over real TCP and
stdio in test_tcp.py and test_stdio.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from replica.keyspaces import Keyspaces, wall_clock_ms
from replica.node import router as node_module
from replica.node.handlers import mv as mv_ops
from replica.node.handlers import mvcc as mvcc_ops
from replica.node.router import Node, NodeSettings
from replica.replication import delta_compression
from replica.session import trusted


class Client:
    """Sends bodies to a node in the bare form, as trusted input, and decodes its replies."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.next_id = 1
        self.session = trusted()

    def __call__(self, type_: str, **fields: Any) -> dict[str, Any]:
        body = {"type": type_, "msg_id": self.next_id, **fields}
        self.next_id += 1
        line = self.node.handle_line(orjson.dumps(body), self.session)
        assert line is not None and line.endswith(b"\n")
        reply = orjson.loads(line)
        assert reply.get("in_reply_to") == body["msg_id"]
        return reply

    def raw(self, line: bytes) -> dict[str, Any] | None:
        out = self.node.handle_line(line, self.session)
        return None if out is None else orjson.loads(out)


def make_node(node_id: str = "n1", **settings: Any) -> Node:
    return Node(node_id, ["n1", "n2", "n3"], NodeSettings(**settings))


@pytest.fixture
def client() -> Client:
    return Client(make_node())


def error_code(reply: dict[str, Any]) -> int:
    assert reply["type"] == "error", reply
    return reply["code"]


# -- framing of messages ------------------------------------------------------------


def test_msg_ids_count_every_message_from_zero(client: Client) -> None:
    ids = [client("mv_read", key="a")["msg_id"] for _ in range(3)]
    ids.append(client("nope")["msg_id"])  # errors are messages too
    assert ids == [0, 1, 2, 3]


def test_envelope_form_is_answered_in_envelope_form(client: Client) -> None:
    line = orjson.dumps(
        {"src": "c7", "dest": "n1", "body": {"type": "mv_read", "msg_id": 9, "key": "k"}}
    )
    reply = client.raw(line)
    assert reply == {
        "src": "n1",
        "dest": "c7",
        "body": {
            "type": "mv_read_ok",
            "in_reply_to": 9,
            "msg_id": 0,
            "values": [],
            "context": {},
        },
    }


def test_request_without_msg_id_is_still_answered(client: Client) -> None:
    reply = client.raw(b'{"type": "mv_read", "key": "k"}')
    assert reply is not None and reply["type"] == "mv_read_ok"
    assert "in_reply_to" not in reply


@pytest.mark.parametrize(
    "line",
    [
        b"garbage",
        b"\xff\xfe{}",
        b"[1, 2]",
        b'"text"',
        b'{"type": 5}',
        b'{"type": "mv_read", "msg_id": "one", "key": "k"}',
        b'{"src": "c1", "dest": "n1", "body": [1]}',
    ],
)
def test_unreadable_lines_get_error_12(client: Client, line: bytes) -> None:
    reply = client.raw(line)
    assert reply is not None
    body = reply.get("body", reply)
    assert error_code(body) == 12
    assert body["text"]


def test_unknown_type_gets_error_10(client: Client) -> None:
    assert error_code(client("frobnicate", key="k")) == 10


def test_acknowledgement_from_a_peer_gets_no_reply(client: Client) -> None:
    assert client.raw(b'{"type": "mv_merge_ok", "in_reply_to": 4, "msg_id": 1}') is None


def test_handler_that_raises_becomes_error_13_and_node_keeps_serving(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(node: Node, body: dict[str, Any], src: str | None) -> dict[str, Any]:
        raise ZeroDivisionError("boom")

    monkeypatch.setitem(node_module.HANDLERS, "mv_read", broken)
    assert error_code(client("mv_read", key="k")) == 13
    assert "ZeroDivisionError" in caplog.text
    assert client("lww_write", key="k", value=1, timestamp=1)["type"] == "lww_write_ok"


# -- init -------------------------------------------------------------------------------


def test_unbound_node_refuses_requests_until_init() -> None:
    client = Client(Node())
    assert error_code(client("mv_read", key="k")) == 11
    assert client("init", node_id="n2", node_ids=["n1", "n2"])["type"] == "init_ok"
    assert client.node.node_id == "n2"
    assert client("mv_write", key="k", value=1)["vclock"] == {"n2": 1}


def test_init_naming_another_node_is_refused(client: Client) -> None:
    assert client("init", node_id="n1", node_ids=["n1"])["type"] == "init_ok"
    assert error_code(client("init", node_id="n9", node_ids=["n9"])) == 22
    assert client.node.node_id == "n1"


def test_init_with_ill_typed_fields_gets_error_12() -> None:
    client = Client(Node())
    assert error_code(client("init", node_id=1, node_ids=["n1"])) == 12
    assert error_code(client("init", node_id="n1", node_ids=[1])) == 12
    assert not client.node.initialised


# -- MV registers --------------------------------------------------------------------


def test_mv_write_then_read_returns_value_with_its_clock(client: Client) -> None:
    written = client("mv_write", key="cart", value=["a"])
    sibling = {"value": ["a"], "vclock": {"n1": 1}, "dot": ["n1", 1]}
    assert written["vclock"] == {"n1": 1}
    assert written["context"] == {"n1": 1}
    assert written["values"] == [sibling]
    assert client("mv_read", key="cart")["values"] == [sibling]


def test_mv_write_without_context_replaces_local_values(client: Client) -> None:
    client("mv_write", key="k", value=1)
    client("mv_write", key="k", value=2)
    assert [v["value"] for v in client("mv_read", key="k")["values"]] == [2]


def test_mv_concurrent_writes_become_siblings_and_a_context_write_resolves(
    client: Client,
) -> None:
    client("mv_write", key="k", value="mine")
    client("mv_merge", key="k", siblings=[{"value": "theirs", "dot": ["n2", 1], "past": {}}])
    read = client("mv_read", key="k")
    assert [v["value"] for v in read["values"]] == ["mine", "theirs"]
    resolved = client("mv_write", key="k", value="both", context=read["context"])
    assert [v["value"] for v in resolved["values"]] == ["both"]


def test_mv_write_with_stale_context_keeps_unseen_sibling(client: Client) -> None:
    first = client("mv_write", key="k", value="a")
    client("mv_merge", key="k", siblings=[{"value": "b", "dot": ["n2", 1], "past": {}}])
    after = client("mv_write", key="k", value="c", context=first["context"])
    assert sorted(v["value"] for v in after["values"]) == ["b", "c"]


def test_mv_write_issues_a_counter_above_the_dot_floor(client: Client) -> None:
    client.node.keyspaces.dot_floor = 41
    written = client("mv_write", key="k", value="new")
    assert written["values"][0]["dot"] == ["n1", 42]
    # a client still holding a context of the key from before the floor does not supersede it
    stale = client("mv_write", key="k", value="stale", context={"n1": 3})
    assert [v["dot"] for v in stale["values"]] == [["n1", 42], ["n1", 43]]


def test_mv_merge_seed_entry_form_uses_the_sender(client: Client) -> None:
    line = orjson.dumps(
        {
            "src": "n2",
            "dest": "n1",
            "body": {
                "type": "mv_merge",
                "msg_id": 3,
                "key": "k",
                "entry": {"value": "v2", "vclock": {"n2": 1, "n3": 4}},
            },
        }
    )
    reply = client.raw(line)
    assert reply is not None and reply["body"]["type"] == "mv_merge_ok"
    values = client("mv_read", key="k")["values"]
    assert values == [{"value": "v2", "vclock": {"n2": 1, "n3": 4}, "dot": ["n2", 1]}]


def test_mv_merge_without_msg_id_is_applied_silently(client: Client) -> None:
    sibling = {"value": 1, "dot": ["n3", 2], "past": {}}
    line = orjson.dumps({"type": "mv_merge", "key": "k", "siblings": [sibling]})
    assert client.raw(line) is None
    assert client("mv_read", key="k")["context"] == {"n3": 2}


def test_mv_merge_batch_with_one_bad_delta_refuses_that_key_alone(client: Client) -> None:
    deltas = [
        {"key": "a", "siblings": [{"value": 1, "dot": ["n2", 1], "past": {}}]},
        {"key": "b", "siblings": [{"value": 2, "dot": ["n2", 0], "past": {}}]},
        "not a delta",
        {"key": "c", "siblings": [{"value": 3, "dot": ["n2", 1 << 63], "past": {}}]},
    ]
    assert client("mv_merge", deltas=deltas)["type"] == "mv_merge_ok"
    assert client("mv_read", key="a")["values"][0]["value"] == 1
    assert client("mv_read", key="b")["values"] == []
    assert client("mv_read", key="c")["values"] == []


@pytest.mark.parametrize(
    "fields",
    [
        {"value": 1},
        {"key": 5, "value": 1},
        {"key": "k"},
        {"key": "k", "value": 1, "context": {"n1": -1}},
        {"key": "k", "value": 1, "context": {"n1": True}},
        {"key": "k", "value": 1, "context": [1]},
    ],
)
def test_mv_write_bad_fields_get_error_12_and_change_nothing(
    client: Client, fields: dict[str, Any]
) -> None:
    assert error_code(client("mv_write", **fields)) == 12
    assert client.node.keyspaces.states["mv"] == {}


# -- client-clocked KV ----------------------------------------------------------------


def test_kv_put_statuses_follow_the_clock_rules(client: Client) -> None:
    assert client("kv_put", key="u", value="A", clock=[1, 0])["status"] == "written"
    assert client("kv_put", key="u", value="A", clock=[1, 0])["status"] == "written"
    stale = client("kv_put", key="u", value="Z", clock=[1])
    assert (stale["status"], stale["reason"]) == ("rejected", "stale")
    conflict = client("kv_put", key="u", value="B", clock=[0, 1])
    assert (conflict["status"], conflict["siblings"]) == ("conflict", 2)
    assert client("kv_get", key="u")["values"] == [
        {"value": "A", "clock": [1, 0]},
        {"value": "B", "clock": [0, 1]},
    ]


def test_kv_resolve_must_cover_every_sibling(client: Client) -> None:
    client("kv_put", key="u", value="A", clock=[1, 0])
    client("kv_put", key="u", value="B", clock=[0, 1])
    refused = client("kv_resolve", key="u", value="AB", clock=[1, 0, 1])
    assert error_code(refused) == 22 and "[0, 1]" in refused["text"]
    assert len(client("kv_get", key="u")["values"]) == 2
    assert client("kv_resolve", key="u", value="AB", clock=[1, 1])["status"] == "resolved"
    assert client("kv_get", key="u")["values"] == [{"value": "AB", "clock": [1, 1]}]


def test_kv_get_absent_key_is_empty(client: Client) -> None:
    assert client("kv_get", key="nothing")["values"] == []


@pytest.mark.parametrize("clock", [None, "1,0", [1, -1], [1.5], [True], {"n1": 1}])
def test_kv_put_bad_clock_gets_error_12(client: Client, clock: Any) -> None:
    fields = {"key": "u", "value": 1} | ({} if clock is None else {"clock": clock})
    assert error_code(client("kv_put", **fields)) == 12
    assert client.node.keyspaces.states["kv"] == {}


def test_kv_merge_keeps_concurrent_siblings(client: Client) -> None:
    client("kv_put", key="u", value="A", clock=[1, 0])
    client("kv_merge", key="u", siblings=[{"value": "B", "clock": [0, 1]}])
    assert len(client("kv_get", key="u")["values"]) == 2


# -- MVCC ------------------------------------------------------------------------------


def test_mvcc_reads_see_the_version_as_of_their_timestamp(client: Client) -> None:
    assert client("mvcc_put", key="x", value="v1", timestamp=100)["version"] == 1
    assert client("mvcc_put", key="x", value="v2", timestamp=200)["version"] == 2
    got = client("mvcc_get", key="x", read_timestamp=150)
    assert (got["value"], got["version"], got["as_of_timestamp"]) == ("v1", 1, 100)
    assert client("mvcc_get", key="x")["value"] == "v2"
    assert error_code(client("mvcc_get", key="x", read_timestamp=99)) == 20
    assert error_code(client("mvcc_get", key="absent")) == 20


def test_mvcc_put_at_or_below_newest_conflicts_unless_identical_retry(client: Client) -> None:
    client("mvcc_put", key="x", value="v1", timestamp=100)
    client("mvcc_put", key="x", value="v2", timestamp=200)
    assert error_code(client("mvcc_put", key="x", value="other", timestamp=200)) == 30
    assert error_code(client("mvcc_put", key="x", value="other", timestamp=150)) == 30
    retry = client("mvcc_put", key="x", value="v2", timestamp=200)
    assert (retry["version"], retry["timestamp"]) == (2, 200)


def test_mvcc_put_without_timestamp_goes_above_everything_seen(client: Client) -> None:
    far = (wall_clock_ms() + 30_000) << 16  # half a minute ahead: within max_clock_skew_ms
    client("mvcc_put", key="x", value="v1", timestamp=far)
    assigned = client("mvcc_put", key="x", value="v2")
    assert assigned["timestamp"] > far and assigned["version"] == 2


def test_mvcc_snapshot_reads_many_keys_at_one_timestamp(client: Client) -> None:
    client("mvcc_put", key="a", value=1, timestamp=10)
    client("mvcc_put", key="a", value=2, timestamp=30)
    client("mvcc_put", key="b", value=3, timestamp=20)
    snap = client("mvcc_snapshot", keys=["a", "b", "c"], read_timestamp=25)
    assert snap["values"] == {
        "a": {"value": 1, "version": 1, "as_of_timestamp": 10},
        "b": {"value": 3, "version": 1, "as_of_timestamp": 20},
        "c": None,
    }


def test_mvcc_gc_drops_invisible_versions_and_refuses_reads_below_horizon(
    client: Client,
) -> None:
    for ts in (10, 20, 30, 40):
        client("mvcc_put", key="x", value=ts, timestamp=ts)
    gc = client("mvcc_gc", before=35)
    assert (gc["removed"], gc["horizon"]) == (2, 35)
    assert error_code(client("mvcc_get", key="x", read_timestamp=34)) == 22
    assert error_code(client("mvcc_snapshot", keys=["x"], read_timestamp=1)) == 22
    kept = client("mvcc_get", key="x", read_timestamp=35)
    assert (kept["value"], kept["version"]) == (30, 3)
    assert client("mvcc_gc", before=5)["horizon"] == 35  # the horizon never moves back


def test_mvcc_retention_moves_the_horizon_behind_the_clocks_own_timestamps() -> None:
    now = [1_000]
    keyspaces = Keyspaces("n1", mvcc_retention_ms=1, now_ms=lambda: now[0])
    step = 1 << 16  # one millisecond in the hybrid clock's units
    issued = []
    for _ in range(4):
        issued.append(mvcc_ops.put(keyspaces, "x", len(issued), None)[1])
        now[0] += 1
    assert issued == [t * step for t in range(1_000, 1_004)]
    assert keyspaces.horizon == issued[2]
    assert mvcc_ops.read(keyspaces, "x", issued[2]) is not None
    assert [v.timestamp for v in keyspaces.states["mvcc"]["x"].versions] == issued[2:]


def test_client_timestamps_do_not_move_the_horizon() -> None:
    client = Client(make_node(mvcc_retention_ms=1))
    step = 1 << 16
    for i in range(1, 5):
        client("mvcc_put", key="x", value=i, timestamp=i * step)
    assert client.node.keyspaces.horizon == 0
    assert client("mvcc_get", key="x", read_timestamp=step)["version"] == 1


@pytest.mark.parametrize(
    ("type_", "fields"),
    [
        ("mvcc_put", {"key": "x", "value": 1, "timestamp": -1}),
        ("mvcc_put", {"key": "x", "value": 1, "timestamp": 1.5}),
        ("mvcc_put", {"key": "x", "value": 1, "timestamp": 1 << 63}),
        ("mvcc_get", {"key": "x", "read_timestamp": "now"}),
        ("mvcc_snapshot", {"keys": "x", "read_timestamp": 1}),
        ("mvcc_snapshot", {"keys": ["x"]}),
        ("mvcc_gc", {}),
    ],
)
def test_mvcc_bad_fields_get_error_12(client: Client, type_: str, fields: dict[str, Any]) -> None:
    assert error_code(client(type_, **fields)) == 12
    assert client.node.keyspaces.states["mvcc"] == {}


def test_mvcc_merge_of_a_timestamp_written_twice_picks_the_higher_origin(
    client: Client,
) -> None:
    client("mvcc_put", key="x", value="mine", timestamp=100)
    state = {"versions": [[100, "theirs", "n2"]], "floor": -1, "dropped": 0}
    client("mvcc_merge", key="x", state=state)
    assert client("mvcc_get", key="x")["value"] == "theirs"


# -- LWW registers ----------------------------------------------------------------------


def test_lww_greater_timestamp_wins_and_older_write_loses(client: Client) -> None:
    assert client("lww_write", key="f", value="new", timestamp=20) == {
        "type": "lww_write_ok",
        "timestamp": 20,
        "replica": "n1",
        "in_reply_to": 1,
        "msg_id": 0,
    }
    client("lww_write", key="f", value="old", timestamp=10)
    read = client("lww_read", key="f")
    assert (read["value"], read["timestamp"], read["replica"]) == ("new", 20, "n1")


def test_lww_equal_timestamps_are_broken_by_replica(client: Client) -> None:
    client("lww_write", key="f", value="mine", timestamp=7)
    client("lww_merge", key="f", state={"value": "theirs", "timestamp": 7, "replica": "n2"})
    assert client("lww_read", key="f")["replica"] == "n2"
    client("lww_merge", key="f", state={"value": "lower", "timestamp": 7, "replica": "n0"})
    assert client("lww_read", key="f")["value"] == "theirs"


def test_lww_write_without_timestamp_is_above_everything_seen(client: Client) -> None:
    ahead = (wall_clock_ms() + 30_000) << 16  # half a minute ahead: within max_clock_skew_ms
    client("lww_merge", key="f", state={"value": 1, "timestamp": ahead, "replica": "n2"})
    written = client("lww_write", key="f", value=2)
    assert written["timestamp"] > ahead
    assert client("lww_read", key="f")["value"] == 2


def test_lww_read_of_absent_key_is_error_20(client: Client) -> None:
    assert error_code(client("lww_read", key="f")) == 20


def test_keyspaces_are_separate(client: Client) -> None:
    client("lww_write", key="x", value="lww", timestamp=1)
    assert client("mv_read", key="x")["values"] == []
    assert client("kv_get", key="x")["values"] == []
    assert error_code(client("mvcc_get", key="x")) == 20


# -- compressed delta batches ---------------------------------------------------------------


def test_mv_merge_accepts_a_compressed_batch(client: Client) -> None:
    deltas = [
        {"key": f"k{i}", "siblings": [{"value": i, "dot": ["n2", 1], "past": {}}]}
        for i in range(50)
    ]
    packed = delta_compression.pack(orjson.dumps(deltas))
    assert client("mv_merge", deltas_z=packed)["type"] == "mv_merge_ok"
    assert client("mv_read", key="k49")["values"][0]["value"] == 49


@pytest.mark.parametrize(
    "deltas_z",
    [
        "not base64!",
        5,
        delta_compression.pack(b'{"not": "an array"}'),
        delta_compression.pack(b"not json"),
        delta_compression.pack(b"[" + b" " * (65 << 20) + b"]"),  # inflates past the bound
    ],
)
def test_bad_compressed_batches_get_error_12_and_change_nothing(
    client: Client, deltas_z: object
) -> None:
    assert error_code(client("kv_merge", deltas_z=deltas_z)) == 12
    assert client.node.keyspaces.states["kv"] == {}


def test_gossip_compresses_large_batches_and_a_peer_applies_them() -> None:
    sender, receiver = make_node("n1"), make_node("n2")
    lines: list[bytes] = []
    assert sender.replicator is not None
    sender.replicator.outbox = lambda dest, line: dest == "n2" and not lines.append(line)
    sender.replicator.link_up("n2")
    for i in range(200):
        mv_ops.write(sender.keyspaces, f"key{i}", "value", None)
    while sender.replicator.push():
        pass
    assert lines and all(b'"deltas_z"' in line for line in lines)
    assert sum(map(len, lines)) < 200 * 60  # far below the plain JSON of 200 states
    for line in lines:
        ack = receiver.handle_line(line.rstrip(b"\n"), trusted())
        assert ack is not None and b"mv_merge_ok" in ack
    assert receiver.keyspaces.states["mv"] == sender.keyspaces.states["mv"]


def test_anti_entropy_waits_until_the_digests_are_rehashed_a_slice_per_tick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from replica.replication import anti_entropy as anti_entropy_module

    monkeypatch.setattr(anti_entropy_module, "REHASH_KEYS_PER_TICK", 10)
    node = make_node()
    client = Client(node)
    for i in range(25):
        client("mv_write", key=f"k{i}", value=i)
    peer = make_node("n2")
    theirs = peer.replicator.digests["mv"].root()  # type: ignore[union-attr]
    ask = {"type": "ae_roots", "roots": {"mv": theirs}, "msg_id": 1}
    replicator = node.replicator
    assert replicator is not None
    assert node.handle_body(dict(ask), "n2", trusted())["buckets"] == {}  # 25 dirty keys: not yet
    replicator.tick()
    assert replicator.digests["mv"].dirty == 15
    replicator.tick()
    assert replicator.digests["mv"].dirty == 5
    answer = node.handle_body(dict(ask), "n2", trusted())
    assert answer["type"] == "ae_roots_ok"
    assert len(answer["buckets"]["mv"]) == 256  # ready: the roots differ, so the buckets come
    assert replicator.digests["mv"].dirty == 0
