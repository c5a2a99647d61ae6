"""Sibling limits and the value size limit: client writes refused, merges never.

The pure checks (`replica.limits`) on their own, the keyspaces that apply
them, the three `[cluster]` keys, and real `replica serve` processes: the
sixth concurrent write under `max_siblings = 5` refused with error 22, a
partition healed into 3 + 3 siblings kept on every node and counted, the
warning logged once, and values one byte past `max_value_bytes` refused with
error 12 on every write message and on the Redis port, writing nothing.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from replica import limits
from replica.cli.config import ConfigError, load_cluster
from replica.crdt.mv_register import MVRegister, Sibling
from replica.crdt.registry import MV
from replica.crdt.version_vector import Dot
from replica.errors import ErrorCode
from replica.keyspaces import Keyspaces
from replica.limits import Limits, SiblingWatch, TooManySiblings, ValueTooLarge
from replica.node.handlers import kv as kv_ops
from replica.node.handlers import mv as mv_ops
from replica.node.router import Node, NodeSettings
from replica.session import trusted
from replica.testing import ProxiedCluster, ReplicaError, eventually, replica_command
from replica.testing.plugin import ClusterFactory

NODE = '[[nodes]]\nid = "n1"\nhost = "127.0.0.1"\nport = 7001\n'


# -- the pure checks ---------------------------------------------------------------------


def test_only_a_write_that_adds_a_sibling_past_the_limit_is_refused() -> None:
    limits.check_siblings("mv", "k", 4, 5, 5)  # up to the limit
    limits.check_siblings("mv", "k", 9, 9, 5)  # above it, adding none: may resolve
    limits.check_siblings("kv", "k", 9, 7, 5)
    with pytest.raises(TooManySiblings) as refused:
        limits.check_siblings("mv", "k", 5, 6, 5)
    assert refused.value.code == ErrorCode.PRECONDITION_FAILED
    assert "6 siblings" in refused.value.text and "max_siblings (5)" in refused.value.text


def test_value_size_is_its_json_encoding_and_exact_at_the_limit() -> None:
    for value in ["x" * 98, {"a": [1, 2.5, None, True]}, 12345, "\x01" * 16, "é" * 40]:
        size = len(orjson.dumps(value))
        assert limits.value_size(value, size) is None
        assert limits.value_size(value, size - 1) == size
        with pytest.raises(ValueTooLarge) as refused:
            limits.check_value(value, size - 1)
        assert refused.value.code == ErrorCode.MALFORMED_REQUEST
        assert f"{size} bytes" in refused.value.text


def test_a_short_string_is_not_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    def encode(value: Any) -> bytes:
        raise AssertionError("encoded")

    monkeypatch.setattr(limits.orjson, "dumps", encode)
    assert limits.value_size("x" * 1000, 6002) is None
    with pytest.raises(AssertionError):
        limits.value_size("x" * 1000, 6001)


def test_a_key_is_warned_of_once_each_time_it_crosses_sibling_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    watch = SiblingWatch(Limits(sibling_warn=3, max_siblings=5))
    with caplog.at_level(logging.WARNING, "replica.limits"):
        for old, new in [(1, 2), (2, 3), (3, 4), (4, 3), (3, 5)]:
            watch.resized("mv", "k", old, new)
        assert watch.sibling_warnings == 1
        watch.resized("mv", "k", 5, 2)
        watch.resized("mv", "k", 2, 3)
    assert watch.sibling_warnings == 2
    assert [r.getMessage().startswith("mv key 'k' holds 3 siblings") for r in caplog.records] == [
        True,
        True,
    ]


def test_merges_over_the_limit_are_all_counted_and_logged_at_most_once_an_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    watch = SiblingWatch(Limits(sibling_warn=3, max_siblings=5), clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "replica.limits"):
        watch.merged("mv", "k", 5)
        for _ in range(4):
            watch.merged("mv", "k", 6)
        now[0] += limits.MERGE_LOG_INTERVAL_S
        watch.merged("kv", "j", 7)
    assert watch.merges_over_max_siblings == 5
    assert len(caplog.records) == 2
    assert "3 more such merges" in caplog.records[1].getMessage()


# -- keyspaces and handlers ----------------------------------------------------------------


def concurrent_register(actor: str, count: int) -> MVRegister:
    """`count` siblings of `actor` none of which saw another."""
    return MVRegister.of(
        [Sibling.at(f"{actor}{i}", Dot(actor, i), {}) for i in range(1, count + 1)]
    )


def test_the_write_past_max_siblings_changes_nothing_and_a_merge_past_it_is_kept() -> None:
    keyspaces = Keyspaces("n1", limits=Limits(sibling_warn=3, max_siblings=5))
    changed: list[str] = []
    keyspaces.listeners.append(lambda name, key, local: changed.append(key))
    for i in range(5):
        mv_ops.write(keyspaces, "k", i, {})
    before = keyspaces.states["mv"]["k"]
    with pytest.raises(TooManySiblings):
        mv_ops.write(keyspaces, "k", 5, {})
    assert keyspaces.states["mv"]["k"] is before and len(changed) == 5
    assert keyspaces.sibling_watch.sibling_warnings == 1

    keyspaces.merge(MV, "k", concurrent_register("n2", 3))
    assert len(keyspaces.states["mv"]["k"]) == 8
    assert keyspaces.sibling_watch.merges_over_max_siblings == 1
    _, context = keyspaces.states["mv"]["k"].read_view()
    mv_ops.write(keyspaces, "k", "resolved", context)  # resolving is never refused
    assert keyspaces.states["mv"]["k"].values() == ["resolved"]


def test_a_kv_put_past_max_siblings_is_refused_and_changes_nothing() -> None:
    keyspaces = Keyspaces("n1", limits=Limits(sibling_warn=2, max_siblings=3))
    clocks = [(1,), (0, 1), (0, 0, 1)]
    for value, clock in enumerate(clocks):
        assert kv_ops.put(keyspaces, "k", value, clock).status in ("written", "conflict")
    before = keyspaces.states["kv"]["k"]
    with pytest.raises(TooManySiblings):
        kv_ops.put(keyspaces, "k", 3, (0, 0, 0, 1))
    assert keyspaces.states["kv"]["k"] is before
    assert kv_ops.put(keyspaces, "k", "all", (1, 1, 1, 1)).status == "written"


def test_a_peer_merge_is_never_refused_for_its_size_or_its_siblings() -> None:
    node = Node("n1", ["n1", "n2"], NodeSettings(sibling_warn=1, max_siblings=1, max_value_bytes=8))
    big = "x" * 100
    siblings = [{"value": big, "dot": ["n2", i], "past": {}} for i in (1, 2, 3)]
    merge = {"type": "mv_merge", "msg_id": 1, "key": "k", "siblings": siblings}
    assert node.handle_body(merge, "n2", trusted())["type"] == "mv_merge_ok"
    assert node.keyspaces.states["mv"]["k"].values() == [big] * 3
    assert node.keyspaces.sibling_watch.merges_over_max_siblings == 1
    write = {"type": "mv_write", "msg_id": 2, "key": "j", "value": big}
    reply = node.handle_body(write, None, trusted())
    assert reply["code"] == 12 and "j" not in node.keyspaces.states["mv"], reply


# -- configuration --------------------------------------------------------------------------


def test_the_three_keys_default_and_reach_the_node(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(NODE)
    settings = load_cluster(path).node_settings()
    assert (settings.sibling_warn, settings.max_siblings, settings.max_value_bytes) == (
        25,
        100,
        1 << 20,
    )
    path.write_text("[cluster]\nsibling_warn = 2\nmax_siblings = 2\nmax_value_bytes = 9\n" + NODE)
    settings = load_cluster(path).node_settings()
    assert (settings.sibling_warn, settings.max_siblings, settings.max_value_bytes) == (2, 2, 9)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("sibling_warn = 0", "sibling_warn must be greater than 0, not 0"),
        ('max_siblings = "5"', "max_siblings must be an integer, not '5'"),
        ("max_value_bytes = -1", "max_value_bytes must be greater than 0, not -1"),
        ("max_value_bytes = 1.5", "max_value_bytes must be an integer"),
        ("max_siblings = 10", "sibling_warn (25) must not exceed max_siblings (10)"),
        ("sibling_warn = 6\nmax_siblings = 5", "sibling_warn (6) must not exceed max_siblings (5)"),
    ],
)
def test_bad_limits_are_one_line_naming_them(tmp_path: Path, setting: str, needle: str) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(f"[cluster]\n{setting}\n" + NODE)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_serve_with_sibling_warn_above_max_siblings_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[cluster]\nsibling_warn = 6\nmax_siblings = 5\n" + NODE)
    result = subprocess.run(
        replica_command("serve", "--config", str(path), "--node", "n1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"replica: config error: {path}: [cluster] sibling_warn (6) must not exceed "
        "max_siblings (5)"
    ]


# -- real processes --------------------------------------------------------------------------


async def refused(call: Any, code: int) -> str:
    with pytest.raises(ReplicaError) as caught:
        await call
    assert caught.value.code == code, caught.value.reply
    return caught.value.text


def warnings_about(cluster: ProxiedCluster, node_id: str, key: str) -> int:
    return cluster.nodes[node_id].stderr_text().count(f"mv key {key!r} holds")


async def test_the_sixth_concurrent_write_is_refused_and_the_warning_logged_once(
    replica_cluster: ClusterFactory,
) -> None:
    cluster = await replica_cluster(n=2, memory=True, sibling_warn=3, max_siblings=5)
    n1 = await cluster.client("n1")
    for i in range(5):
        await n1.mv_write("k", f"v{i}", context={})
    text = await refused(n1.mv_write("k", "v5", context={}), 22)
    assert "6 siblings" in text and "max_siblings (5)" in text, text
    read = await n1.mv_read("k")
    assert sorted(v["value"] for v in read["values"]) == [f"v{i}" for i in range(5)]
    status = await n1.status()
    assert status["sibling_warnings"] == 1 and status["merges_over_max_siblings"] == 0
    await eventually(
        lambda: _async(warnings_about(cluster, "n1", "k")), lambda n: n == 1, "the warning"
    )

    for i, clock in enumerate([[1], [0, 1], [0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0, 1]]):
        await n1.kv_put("c", i, clock)
    text = await refused(n1.kv_put("c", 5, [0, 0, 0, 0, 0, 1]), 22)
    assert "kv key 'c'" in text, text
    assert len((await n1.kv_get("c"))["values"]) == 5


async def test_a_merge_past_max_siblings_is_kept_everywhere_and_counted(
    replica_cluster: ClusterFactory,
) -> None:
    cluster = await replica_cluster(n=2, memory=True, sibling_warn=3, max_siblings=5)
    n1, n2 = await cluster.client("n1"), await cluster.client("n2")
    async with cluster.partitioned([["n1"], ["n2"]]):
        for i in range(3):
            await n1.mv_write("k", f"left{i}", context={})
            await n2.mv_write("k", f"right{i}", context={})
    for node in ("n1", "n2"):
        client = await cluster.client(node)
        await eventually(
            lambda c=client: c.mv_read("k"), lambda r: len(r["values"]) == 6, f"6 at {node}"
        )
        status = await client.status()
        assert status["merges_over_max_siblings"] >= 1, status
        assert status["max_siblings"]["mv"] == 6
    await refused(n1.mv_write("k", "seventh", context={}), 22)
    read = await n2.mv_read("k")
    await n2.mv_write("k", "resolved", context=read["context"])
    await cluster.converged(reads=[{"type": "mv_read", "key": "k"}])
    assert [v["value"] for v in (await n1.mv_read("k"))["values"]] == ["resolved"]


LIMIT = 100
AT_LIMIT = "x" * (LIMIT - 2)  # with its quotes, LIMIT bytes of JSON
OVER = "x" * (LIMIT - 1)


async def test_a_value_one_byte_over_max_value_bytes_is_refused_by_every_write(
    replica_cluster: ClusterFactory,
) -> None:
    cluster = await replica_cluster(n=1, memory=True, max_value_bytes=LIMIT, resp=True)
    n1 = await cluster.client("n1")
    writes = {
        "mv": lambda v: n1.mv_write("m", v),
        "kv": lambda v: n1.kv_put("k", v, [1]),
        "lww": lambda v: n1.lww_write("l", v),
        "mvcc": lambda v: n1.mvcc_put("c", v),
    }
    for name, write in writes.items():
        text = await refused(write(OVER), 12)
        assert f"{LIMIT + 1} bytes" in text and f"max_value_bytes ({LIMIT})" in text, text
        assert (await n1.status())["keys"][name] == 0
        await write(AT_LIMIT)
    await refused(n1.kv_resolve("k", {"list": [OVER]}, [2]), 12)
    assert (await n1.kv_get("k"))["values"] == [{"value": AT_LIMIT, "clock": [1]}]
    assert (await n1.lww_read("l"))["value"] == AT_LIMIT

    redis = pytest.importorskip("redis.asyncio")
    from redis.exceptions import ResponseError

    host, port = cluster.resp_address("n1")
    client = redis.Redis(host=host, port=port, protocol=2)
    try:
        with pytest.raises(ResponseError, match="max_value_bytes"):
            await client.execute_command("MVREG", "SET", "r", OVER)
        with pytest.raises(ResponseError, match="max_value_bytes"):
            await client.execute_command("TREG", "SET", "t", OVER, 1)
        assert await client.execute_command("MVREG", "GET", "r") == []
        assert await client.execute_command("MVREG", "SET", "r", AT_LIMIT) in (b"OK", "OK", True)
    finally:
        await client.aclose()
    assert (await n1.mv_read("r"))["values"][0]["value"] == AT_LIMIT


async def _async(value: Any) -> Any:
    return value
