"""The public testing kit on real processes: each fault shows its effect, and nothing is left.

Every test checks, after its cluster is gone, that no process it started is
alive: not a node (a child of this process) and not a log writer or
checkpointer (which live in sessions of their own and are found by their
command line naming the cluster's directory).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from replica.testing import JsonClient, ProxiedCluster, ReplicaError, cluster, eventually
from replica.testing.plugin import ClusterFactory
from tests.test_structure import PACKAGE, all_imports, forbidden_imports

ABSENCE_WINDOW_S = 1.0  # twenty 50 ms gossip ticks: what went through would have arrived


def processes_naming(directory: Path) -> list[tuple[int, str]]:
    """Live processes whose command line mentions `directory` (nodes and their helpers)."""
    needles = {str(directory).encode(), str(directory.resolve()).encode()}
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if any(needle in cmdline for needle in needles):
            found.append((int(proc.name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def children_of_this_process() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.append(int(proc.name))
    return found


@pytest.fixture
def cluster_dirs() -> Iterator[list[Path]]:
    """Directories of the clusters a test started; none may have a process left after it."""
    dirs: list[Path] = []
    children_before = set(children_of_this_process())
    yield dirs
    left = {str(d): processes_naming(d) for d in dirs}
    assert not any(left.values()), f"processes left behind: {left}"
    new_children = set(children_of_this_process()) - children_before
    assert not new_children, f"child processes left behind: {sorted(new_children)}"


@pytest.fixture
async def three(cluster_dirs: list[Path]) -> AsyncIterator[ProxiedCluster]:
    async with cluster(3) as running:
        cluster_dirs.append(running.directory)
        yield running


async def mv_values(running: ProxiedCluster, node: str, key: str) -> list[Any]:
    client = await running.client(node)
    return sorted(entry["value"] for entry in (await client.mv_read(key))["values"])


async def never_shows(running: ProxiedCluster, node: str, key: str, value: Any) -> None:
    """For ABSENCE_WINDOW_S, `node` never shows `value` (an absence needs a window)."""
    deadline = time.monotonic() + ABSENCE_WINDOW_S
    while time.monotonic() < deadline:
        assert value not in await mv_values(running, node, key), f"{node} got {value!r}"
        await asyncio.sleep(0.05)


# -- faults ------------------------------------------------------------------------------


async def test_a_cut_link_delivers_nothing_its_way_while_the_other_way_works(
    cluster_dirs: list[Path],
) -> None:
    async with cluster(2) as running:
        cluster_dirs.append(running.directory)
        await running.cut("n1", "n2")
        assert running.cut_links == {("n1", "n2")}
        await (await running.client("n1")).mv_write("k", "from-n1")
        await (await running.client("n2")).mv_write("k", "from-n2")
        await eventually(
            lambda: mv_values(running, "n1", "k"),
            lambda seen: seen == ["from-n1", "from-n2"],
            "n2's write reaches n1 over the uncut direction",
        )
        await never_shows(running, "n2", "k", "from-n1")
        await running.heal()
        await eventually(
            lambda: mv_values(running, "n2", "k"),
            lambda seen: seen == ["from-n1", "from-n2"],
            "n1's write reaches n2 once the link heals",
        )


async def test_a_partition_as_a_context_manager_heals_on_exit_even_when_the_body_raises(
    three: ProxiedCluster,
) -> None:
    async with three.partitioned([["n1"], ["n2", "n3"]]):
        assert three.cut_links == {("n1", "n2"), ("n1", "n3"), ("n2", "n1"), ("n3", "n1")}
        await (await three.client("n1")).mv_write("cart", "left")
        await (await three.client("n2")).mv_write("cart", "right")
        await never_shows(three, "n1", "cart", "right")
    assert three.cut_links == set()
    await three.converged(reads=[{"type": "mv_read", "key": "cart"}])
    assert await mv_values(three, "n3", "cart") == ["left", "right"]
    with pytest.raises(RuntimeError, match="inside"):
        async with three.partitioned([["n1", "n2"], ["n3"]]):
            assert three.cut_links
            raise RuntimeError("inside the partition")
    assert three.cut_links == set()


async def test_isolating_a_node_cuts_every_link_from_and_to_it(three: ProxiedCluster) -> None:
    await three.isolate("n2")
    assert three.cut_links == {("n2", "n1"), ("n2", "n3"), ("n1", "n2"), ("n3", "n2")}
    await (await three.client("n1")).mv_write("k", "v")
    await eventually(lambda: mv_values(three, "n3", "k"), lambda seen: seen == ["v"], "n3 has v")
    await never_shows(three, "n2", "k", "v")
    await three.heal()
    await eventually(lambda: mv_values(three, "n2", "k"), lambda seen: seen == ["v"], "n2 has v")


async def test_a_paused_node_acknowledges_nothing_and_catches_up_on_resume(
    three: ProxiedCluster,
) -> None:
    paused = await three.client("n2")
    await three.pause("n2")
    await (await three.client("n1")).mv_write("k", "while-paused")
    await paused.send({"type": "mv_read", "key": "k", "msg_id": 99})
    with pytest.raises(TimeoutError):
        await paused.reply_to(99, timeout=ABSENCE_WINDOW_S)
    status = await (await three.client("n1")).status()
    (to_n2,) = [peer for peer in status["peers"] if peer["id"] == "n2"]
    assert to_n2["pending"] > 0, status  # n2 never acknowledged the write
    await three.resume("n2")
    late = await paused.reply_to(99)
    assert late["type"] == "mv_read_ok", late
    await three.converged(reads=[{"type": "mv_read", "key": "k"}])
    assert await mv_values(three, "n2", "k") == ["while-paused"]


async def test_kill_9_and_restart_keep_acknowledged_writes(three: ProxiedCluster) -> None:
    await three.isolate("n1")  # only n1's disk holds these
    n1 = await three.client("n1")
    for index in range(20):
        await n1.mv_write(f"k{index}", index)
    await three.kill("n1")
    assert not three.nodes["n1"].running
    await three.restart("n1")
    for index in range(20):
        assert await mv_values(three, "n1", f"k{index}") == [index]


async def test_a_wiped_node_comes_back_empty_and_refills_by_anti_entropy(
    three: ProxiedCluster,
) -> None:
    n2 = await three.client("n2")
    for index in range(10):
        await n2.mv_write(f"k{index}", index)
    await three.converged()
    await three.isolate("n1")
    await three.wipe_and_restart("n1")
    status = await (await three.client("n1")).status()
    assert sum(status["keys"].values()) == 0, status
    assert await mv_values(three, "n1", "k0") == []
    await three.heal()
    seen = await three.converged()
    assert seen["keys"]["n1"]["mv"] == 10, seen["keys"]
    assert await mv_values(three, "n1", "k9") == [9]


async def test_per_node_settings_and_environment_reach_only_their_node(
    cluster_dirs: list[Path],
) -> None:
    skew_ms = 3_600_000
    async with cluster(
        2,
        memory=True,
        node_settings={"n1": {"max_clock_skew_ms": 1000}},
        node_env={"n2": {"REPLICA_CLOCK_OFFSET_MS": str(skew_ms)}},
    ) as running:
        cluster_dirs.append(running.directory)
        n1, n2 = await running.client("n1"), await running.client("n2")
        ahead = (time.time_ns() // 1_000_000 + 10_000) << 16  # ten seconds from now
        with pytest.raises(ReplicaError) as refused:
            await n1.lww_write("k", "late", timestamp=ahead)
        assert refused.value.code == 22
        assert (await n2.lww_write("k", "late", timestamp=ahead))["timestamp"] == ahead
        issued_n1 = (await n1.lww_write("a", 1))["timestamp"]
        issued_n2 = (await n2.lww_write("b", 1))["timestamp"]
        assert (issued_n2 - issued_n1) >> 16 >= skew_ms - 60_000, (issued_n1, issued_n2)


async def test_skewing_a_running_nodes_clock_moves_the_lww_timestamps_it_issues(
    cluster_dirs: list[Path],
) -> None:
    skew_ms = 3_600_000
    async with cluster(2, memory=True) as running:
        cluster_dirs.append(running.directory)
        before = (await (await running.client("n2")).lww_write("a", 1))["timestamp"]
        await running.skew_clock("n2", skew_ms)
        after = (await (await running.client("n2")).lww_write("b", 1))["timestamp"]
        assert (after - before) >> 16 >= skew_ms, (before, after)
        assert running.nodes["n1"].env.get("REPLICA_CLOCK_OFFSET_MS") is None


async def test_converged_waits_for_equal_digests_which_a_partition_keeps_apart(
    cluster_dirs: list[Path],
) -> None:
    async with cluster(2, memory=True) as running:
        cluster_dirs.append(running.directory)
        async with running.partitioned([["n1"], ["n2"]]):
            await (await running.client("n1")).lww_write("k", "a", timestamp=1)
            await (await running.client("n2")).lww_write("k", "b", timestamp=1)
            apart = await running.statuses()
            assert apart["n1"]["digests"]["lww"] != apart["n2"]["digests"]["lww"]
            assert apart["n1"]["keys"] == apart["n2"]["keys"]  # key counts alone would agree
        seen = await running.converged()
        digests = {node: status["digests"] for node, status in seen["statuses"].items()}
        assert digests["n1"] == digests["n2"] and set(digests["n1"]) >= {"mv", "lww"}
        assert (await (await running.client("n1")).lww_read("k"))["value"] == "b"  # n2 > n1


async def test_a_cluster_with_a_password_gives_clients_that_send_it(
    cluster_dirs: list[Path],
) -> None:
    async with cluster(2, memory=True, password=True) as running:
        cluster_dirs.append(running.directory)
        assert running.password
        mode = (running.directory / "password").stat().st_mode & 0o777
        assert mode == 0o600, oct(mode)
        await (await running.client("n1")).mv_write("k", "v")
        await running.converged(reads=[{"type": "mv_read", "key": "k"}])  # statuses need it too
        async with await running.nodes["n2"].connect() as stranger:
            with pytest.raises(ReplicaError) as refused:
                await stranger.mv_read("k")
            assert refused.value.code == 1000
        own = await running.connect("n2")
        try:
            assert [e["value"] for e in (await own.mv_read("k"))["values"]] == ["v"]
        finally:
            await own.close()


# -- clients, fixtures and teardown ------------------------------------------------------


async def test_an_error_reply_raises_a_replica_error_carrying_its_code(
    cluster_dirs: list[Path], replica_cluster: ClusterFactory
) -> None:
    """Through the plugin's fixture; `cluster_dirs` first, so its check runs after teardown."""
    running = await replica_cluster(n=1, memory=True)
    cluster_dirs.append(running.directory)
    client = await running.client("n1")
    with pytest.raises(ReplicaError) as absent:
        await client.lww_read("missing")
    assert absent.value.code == 20, absent.value.reply
    assert "missing" in absent.value.text
    put = await client.mvcc_put("m", "v1")
    with pytest.raises(ReplicaError) as stale:
        await client.mvcc_put("m", "v0", timestamp=put["timestamp"])
    assert stale.value.code == 30
    raw = await client.call({"type": "lww_read", "key": "missing"})
    assert raw["type"] == "error" and raw["code"] == 20, raw
    status = await client.status()
    assert status["durability"] == {"mode": "memory"}, status


async def test_the_redis_port_is_given_for_redis_py(cluster_dirs: list[Path]) -> None:
    redis = pytest.importorskip("redis.asyncio")
    async with cluster(2, resp=True) as running:
        cluster_dirs.append(running.directory)
        host, port = running.resp_address("n1")
        client = redis.Redis(host=host, port=port)
        try:
            assert await client.execute_command("MVREG", "SET", "k", "v") == b"OK"
        finally:
            await client.aclose()
        async with await JsonClient.connect(host, running.ports["n1"]) as json_client:
            assert [e["value"] for e in (await json_client.mv_read("k"))["values"]] == ["v"]


async def test_teardown_stops_every_process_even_when_the_body_raises(
    cluster_dirs: list[Path],
) -> None:
    started: list[tuple[int, str]] = []
    with pytest.raises(RuntimeError, match="the body failed"):
        async with cluster(2) as running:
            cluster_dirs.append(running.directory)
            await (await running.client("n1")).mv_write("k", "v")
            started = processes_naming(running.directory)
            raise RuntimeError("the body failed")
    kinds = " ".join(cmdline for _, cmdline in started)
    assert "serve" in kinds and "replica.durable.log_writer" in kinds, started
    for pid, _ in started:
        assert (
            not Path(f"/proc/{pid}/cmdline").exists()
            or not Path(f"/proc/{pid}/cmdline").read_bytes()
        ), f"{pid} still alive"


# -- the kit's place in the package ------------------------------------------------------


def test_the_kit_uses_only_what_a_user_could_and_only_the_cli_uses_the_kit() -> None:
    """The server never depends on its test kit; `cluster up --faults` borrows its proxies."""
    imports = all_imports(PACKAGE)
    inner = ["replica.node", "replica.durable", "replica.replication", "replica.transports"]
    assert not forbidden_imports(imports, ["replica.testing"], inner)
    users = [
        f"{module} imports {target}"
        for module, found in imports.items()
        if not module.startswith(("replica.testing", "replica.cli"))
        for target in found
        if target.startswith("replica.testing")
    ]
    assert not users


def test_the_guide_scenario_passes_under_plain_pytest_with_no_conftest(tmp_path: Path) -> None:
    """docs/testing.md's first python block, alone in a directory: the plugin supplies the rest."""
    guide = (PACKAGE.parent / "docs" / "testing.md").read_text()
    scenario = guide.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "test_scenario.py").write_text(scenario)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_scenario.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout, run.stdout
