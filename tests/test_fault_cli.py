"""`replica cluster up --faults`, `replica fault` and `replica status` as a user runs them.

Real processes throughout: the supervisor under the subreaper of
tests/test_supervision.py (so every node, helper and proxy it leaves is seen),
`replica fault` and `replica status` as commands, and clients speaking plain
JSON lines over TCP, as netcat would.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from replica.cli.fault_requests import describe_links, parse_duration_ms, split_groups
from replica.cli.fault_state_file import state_file_path
from tests.harness import LOOPBACK, free_ports, replica_command, write_cluster
from tests.test_supervision import (
    NODES,
    Supervised,
    run_py_root,
    supervised,
    wait_gone,
    wait_listening,
)

DEADLINE = 20.0
T = TypeVar("T")


# -- helpers -------------------------------------------------------------------------------


def request(port: int, body: dict[str, Any]) -> dict[str, Any]:
    """One JSON line to the node at `port`, its one-line reply."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(json.dumps(body).encode() + b"\n")
        with sock.makefile("rb") as replies:
            reply: dict[str, Any] = json.loads(replies.readline())
    return reply


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    deadline = time.monotonic() + DEADLINE
    while True:
        seen = probe()
        if done(seen):
            return seen
        assert time.monotonic() < deadline, f"{what}: never; last seen {seen!r}"
        time.sleep(0.05)


def values(port: int, key: str) -> list[Any]:
    return sorted(
        (sibling["value"] for sibling in request(port, {"type": "mv_read", "key": key})["values"]),
        key=json.dumps,
    )


def replica(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        replica_command(*args), cwd=cwd, capture_output=True, text=True, timeout=60
    )


def fault(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return replica("fault", "--config", "cluster.toml", *args, cwd=directory)


@contextlib.contextmanager
def faulty_cluster(directory: Path) -> Iterator[tuple[Supervised, list[int]]]:
    """`replica cluster up --config cluster.toml --faults` in `directory`, every node answering."""
    ports = free_ports(len(NODES))
    write_cluster(directory, NODES, ports=ports, gossip_interval_ms=50)
    argv = replica_command("cluster", "up", "--config", "cluster.toml", "--faults")
    with supervised(argv, directory / "up.log", cwd=directory) as running:
        wait_listening(ports, running)
        yield running, ports


def stop(running: Supervised, directory: Path) -> None:
    """SIGTERM to the supervisor: exit 0, nothing of its tree left, the state file gone."""
    tree = running.tree()
    assert tree, "the supervisor has no children"
    os.kill(running.pid, signal.SIGTERM)
    assert running.wait_exits([running.pid]) == {running.pid: 0}, running.log_text()
    wait_gone(list(tree), "after SIGTERM to cluster up --faults", running.log_text())
    assert not state_file_path(directory / "cluster.toml").exists()


def proxy_ports(running: Supervised) -> set[int]:
    """The loopback ports the supervisor's proxies listen on, from its nodes' command lines."""
    ports = set()
    for cmdline in running.tree().values():
        for word in cmdline.split():
            if word.startswith("--peer-address="):
                ports.add(int(word.rsplit(":", 1)[1]))
    return ports


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
        return True
    return False


# -- the tutorial --------------------------------------------------------------------------


def test_the_tutorial_isolate_write_on_both_sides_heal_and_resolve(scratch_dir: Path) -> None:
    with faulty_cluster(scratch_dir) as (running, ports):
        n1, n2, n3 = ports
        state = state_file_path(scratch_dir / "cluster.toml")
        assert stat.S_IMODE(state.stat().st_mode) == 0o600

        isolated = fault(scratch_dir, "isolate", "n1")
        assert isolated.returncode == 0, isolated.stderr
        assert isolated.stdout.splitlines() == ["n1 <-> n2  cut", "n1 <-> n3  cut"]
        status = replica("status", "--config", "cluster.toml", cwd=scratch_dir)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "n1 <-> n2  cut" in status.stdout and "n1 <-> n3  cut" in status.stdout

        milk = request(n1, {"type": "mv_write", "key": "cart", "value": ["milk"]})
        eggs = request(n3, {"type": "mv_write", "key": "cart", "value": ["eggs"]})
        assert milk["type"] == eggs["type"] == "mv_write_ok", (milk, eggs)
        wait_for(lambda: values(n2, "cart"), lambda seen: seen == [["eggs"]], "eggs on n2")
        assert values(n2, "cart") == [["eggs"]]  # n1's write cannot cross

        healed = fault(scratch_dir, "heal")
        assert healed.returncode == 0, healed.stderr
        assert healed.stdout.strip() == "every link up, no latency"
        both = wait_for(
            lambda: request(n2, {"type": "mv_read", "key": "cart"}),
            lambda seen: len(seen["values"]) == 2,
            "both siblings on n2",
        )
        assert sorted(s["value"] for s in both["values"]) == [["eggs"], ["milk"]]
        assert both["context"]

        merged = request(
            n2,
            {
                "type": "mv_write",
                "key": "cart",
                "value": ["eggs", "milk"],
                "context": both["context"],
            },
        )
        assert merged["type"] == "mv_write_ok", merged
        for port in ports:
            wait_for(
                lambda port=port: values(port, "cart"),
                lambda seen: seen == [["eggs", "milk"]],
                f"one value on the node at {port}",
            )
        stop(running, scratch_dir)


# -- each fault ----------------------------------------------------------------------------


def test_partition_cut_show_latency_and_status(scratch_dir: Path) -> None:
    with faulty_cluster(scratch_dir) as (running, ports):
        n1, n2, n3 = ports
        partition = fault(scratch_dir, "partition", "n1", "/", "n2", "n3")
        assert partition.returncode == 0, partition.stderr
        assert partition.stdout.splitlines() == ["n1 <-> n2  cut", "n1 <-> n3  cut"]
        request(n2, {"type": "mv_write", "key": "p", "value": "from n2"})
        wait_for(lambda: values(n3, "p"), lambda seen: seen == ["from n2"], "n2 to n3")

        cut = fault(scratch_dir, "cut", "n2", "n3")  # as well: the partition stays
        assert cut.returncode == 0, cut.stderr
        assert cut.stdout.splitlines() == [
            "n1 <-> n2  cut",
            "n1 <-> n3  cut",
            "n2 -> n3   cut",
        ]
        shown = replica("fault", "show", "--config", "cluster.toml", cwd=scratch_dir)
        assert shown.stdout == cut.stdout, shown.stderr
        request(n3, {"type": "mv_write", "key": "one-way", "value": "from n3"})
        request(n2, {"type": "mv_write", "key": "one-way-back", "value": "from n2"})
        wait_for(lambda: values(n2, "one-way"), lambda seen: seen == ["from n3"], "n3 to n2")
        assert values(n3, "one-way-back") == []  # gossip from n2 to n3 is cut
        assert values(n1, "p") == []

        assert fault(scratch_dir, "heal").returncode == 0
        wait_for(lambda: values(n1, "p"), lambda seen: seen == ["from n2"], "healed n2 to n1")
        wait_for(
            lambda: values(n3, "one-way-back"), lambda seen: seen == ["from n2"], "healed n2 to n3"
        )

        delayed = fault(scratch_dir, "latency", "n1", "n2", "1s", "jitter", "20ms")
        assert delayed.returncode == 0, delayed.stderr
        assert delayed.stdout.splitlines() == ["n1 <-> n2  latency 1000 ms jitter 20 ms"]
        status = replica("status", "--config", "cluster.toml", cwd=scratch_dir)
        assert "n1 <-> n2  latency 1000 ms jitter 20 ms" in status.stdout, status.stdout
        assert fault(scratch_dir, "cut", "n1", "n3").returncode == 0
        started = time.monotonic()
        request(n1, {"type": "mv_write", "key": "slow", "value": "from n1"})
        wait_for(lambda: values(n2, "slow"), lambda seen: seen == ["from n1"], "delayed write")
        assert time.monotonic() - started >= 0.98  # the delay, less the jitter allowance

        assert fault(scratch_dir, "heal").stdout.strip() == "every link up, no latency"
        stop(running, scratch_dir)


def test_bad_requests_exit_2_and_change_nothing(scratch_dir: Path) -> None:
    with faulty_cluster(scratch_dir) as (running, _):
        for args, says in [
            (["isolate", "n9"], "unknown node 'n9'"),
            (["partition", "n1", "/", "n1", "n2", "n3"], "'n1' is in two groups"),
            (["partition", "n1", "/", "n2"], "n3 in no group"),
            (["cut", "n1", "n1"], "itself"),
            (["latency", "n1", "n2", "soon"], "not a duration"),
            (["latency", "n1", "n2", "10ms", "wobble", "1ms"], "jitter"),
            (["frobnicate"], "invalid choice"),
        ]:
            refused = fault(scratch_dir, *args)
            assert refused.returncode == 2, (args, refused.stderr)
            assert says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
        assert fault(scratch_dir, "show").stdout.strip() == "every link up, no latency"
        stop(running, scratch_dir)


def control_connection(port: int) -> tuple[socket.socket, Callable[[bytes], dict[str, Any]]]:
    """A connection to the fault control endpoint, and a function sending one line on it."""
    sock = socket.create_connection((LOOPBACK, port), timeout=5)
    replies = sock.makefile("rb")

    def ask(line: bytes) -> dict[str, Any]:
        sock.sendall(line + b"\n")
        reply: dict[str, Any] = json.loads(replies.readline() or b"null")
        return reply

    return sock, ask


def test_the_endpoint_refuses_a_wrong_token_and_bad_requests_and_keeps_serving(
    scratch_dir: Path,
) -> None:
    with faulty_cluster(scratch_dir) as (running, _):
        state = json.loads(state_file_path(scratch_dir / "cluster.toml").read_text())
        assert state["pid"] == running.pid
        token = state["token"]
        sock, ask = control_connection(state["port"])
        with sock:
            assert ask(b'{"type": "heal", "token": "guess"}')["code"] == 1000
            assert sock.recv(1) == b""  # and the connection is closed
        sock, ask = control_connection(state["port"])
        with sock:
            assert ask(b"not json")["code"] == 12
            assert ask(json.dumps({"type": "reboot", "token": token}).encode())["code"] == 10
            body = {"type": "partition", "groups": [["n1"]], "token": token, "msg_id": 7}
            refused = ask(json.dumps(body).encode())
            assert refused["code"] == 12 and refused["in_reply_to"] == 7, refused
            shown = ask(json.dumps({"type": "isolate", "node": "n2", "token": token}).encode())
            assert shown["type"] == "isolate_ok"
            assert shown["cut"] == [["n1", "n2"], ["n2", "n1"], ["n2", "n3"], ["n3", "n2"]]
            assert len(shown["links"]) == 6
        stop(running, scratch_dir)


def test_hostile_control_clients_stall_neither_the_proxies_nor_the_command(
    scratch_dir: Path,
) -> None:
    with faulty_cluster(scratch_dir) as (running, ports):
        state = json.loads(state_file_path(scratch_dir / "cluster.toml").read_text())
        with contextlib.ExitStack() as stack:
            silent = stack.enter_context(socket.create_connection((LOOPBACK, state["port"])))
            flood = stack.enter_context(socket.create_connection((LOOPBACK, state["port"])))
            flood.sendall(b"x" * (128 * 1024))  # a line past the limit, never ended
            flood.settimeout(DEADLINE)
            assert b'"code":12' in flood.recv(4096)
            request(ports[0], {"type": "mv_write", "key": "through", "value": 1})
            wait_for(lambda: values(ports[1], "through"), lambda seen: seen == [1], "replicated")
            shown = fault(scratch_dir, "show")
            assert shown.returncode == 0, shown.stderr
            assert silent.fileno() >= 0
        stop(running, scratch_dir)


def test_no_cluster_exits_1_and_a_stale_state_file_is_ignored_then_replaced(
    scratch_dir: Path,
) -> None:
    write_cluster(scratch_dir, NODES, ports=free_ports(len(NODES)))
    absent = fault(scratch_dir, "show")
    assert absent.returncode == 1 and "no running" in absent.stderr, absent.stderr
    assert len(absent.stderr.splitlines()) == 1

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = state_file_path(scratch_dir / "cluster.toml")
    state.write_text(json.dumps({"pid": dead.pid, "host": LOOPBACK, "port": 1, "token": "x"}))
    stale = fault(scratch_dir, "heal")
    assert stale.returncode == 1 and "stale" in stale.stderr, stale.stderr
    status = replica("status", "--config", "cluster.toml", cwd=scratch_dir)
    assert "links" not in status.stdout  # no cluster: nodes down, no links to show

    with faulty_cluster(scratch_dir) as (running, _):
        assert f"stale {state} ignored" in running.log_text()
        assert json.loads(state.read_text())["pid"] == running.pid
        again = replica("cluster", "up", "--config", "cluster.toml", "--faults", cwd=scratch_dir)
        assert again.returncode == 1 and "already runs" in again.stderr, again.stderr
        assert json.loads(state.read_text())["pid"] == running.pid
        stop(running, scratch_dir)


def test_without_faults_there_is_no_proxy_and_no_state_file(scratch_dir: Path) -> None:
    ports = free_ports(len(NODES))
    write_cluster(scratch_dir, NODES, ports=ports, gossip_interval_ms=50)
    argv = replica_command("cluster", "up", "--config", "cluster.toml")
    with supervised(argv, scratch_dir / "up.log", cwd=scratch_dir) as running:
        wait_listening(ports, running)
        assert not state_file_path(scratch_dir / "cluster.toml").exists()
        assert not any("--peer-address" in cmdline for cmdline in running.tree().values())
        assert fault(scratch_dir, "show").returncode == 1


def test_sigterm_to_run_py_cluster_faults_leaves_nothing(scratch_dir: Path) -> None:
    ports = free_ports(len(NODES))
    write_cluster(scratch_dir, NODES, ports=ports, gossip_interval_ms=50)
    root = run_py_root(scratch_dir)
    (root / "cluster.toml").symlink_to(scratch_dir / "cluster.toml")  # the default --config
    argv = [sys.executable, str(root / "scripts" / "run.py"), "cluster", "--faults"]
    with supervised(argv, scratch_dir / "run.log", cwd=scratch_dir) as running:
        wait_listening(ports, running)
        proxies = wait_for(lambda: proxy_ports(running), lambda seen: len(seen) == 6, "proxies")
        assert all(listening(port) for port in proxies)
        assert fault(scratch_dir, "isolate", "n3").returncode == 0
        tree = running.tree()
        os.kill(running.pid, signal.SIGTERM)
        assert running.wait_exits([running.pid]) == {running.pid: 0}, running.log_text()
        wait_gone(list(tree), "after SIGTERM to run.py cluster --faults", running.log_text())
        assert not any(listening(port) for port in proxies)
        assert not state_file_path(scratch_dir / "cluster.toml").exists()


# -- the pure parts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"), [("100ms", 100.0), ("1s", 1000.0), ("1.5s", 1500.0), ("250", 250.0)]
)
def test_durations(text: str, ms: float) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "fast", "-5ms", "1m", "61s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_groups_split_on_slashes_alone_or_inside_words() -> None:
    assert split_groups(["n1", "/", "n2", "n3"]) == [["n1"], ["n2", "n3"]]
    assert split_groups(["n1/n2", "n3"]) == [["n1"], ["n2", "n3"]]


def test_links_alike_both_ways_are_one_line() -> None:
    def link(a: str, b: str, *, cut: bool = False, delay: float = 0.0) -> dict[str, Any]:
        return {"from": a, "to": b, "cut": cut, "delay_ms": delay, "jitter_ms": 0.0}

    links = [
        link("n1", "n2", cut=True),
        link("n2", "n1", cut=True),
        link("n1", "n3", delay=100.0),
        link("n3", "n1", delay=100.0),
        link("n2", "n3", cut=True),
        link("n3", "n2"),
    ]
    assert describe_links(links, ["n1", "n2", "n3"]) == [
        "n1 <-> n2  cut",
        "n1 <-> n3  latency 100 ms",
        "n2 -> n3   cut",
    ]


def test_a_killed_cluster_up_leaves_a_stale_state_file_the_next_one_replaces(
    scratch_dir: Path,
) -> None:
    state = state_file_path(scratch_dir / "cluster.toml")
    with faulty_cluster(scratch_dir) as (running, _):
        nodes = list(running.tree())
        os.kill(running.pid, signal.SIGKILL)
        running.wait_exits([running.pid])
        wait_gone(nodes, "after SIGKILL to cluster up --faults", running.log_text())
        assert state.exists()
        stale = fault(scratch_dir, "show")
        assert stale.returncode == 1, stale.stderr
        assert stale.stderr.strip() == (
            f"replica fault: stale {state} ignored: its `cluster up --faults` "
            f"(pid {running.pid}) is gone"
        )
    with faulty_cluster(scratch_dir) as (running, _):
        assert f"stale {state} ignored" in running.log_text()
        assert fault(scratch_dir, "cut", "n1", "n2").stdout == "n1 -> n2   cut\n"
        stop(running, scratch_dir)


def test_serve_refuses_a_peer_address_it_cannot_use(scratch_dir: Path) -> None:
    write_cluster(scratch_dir, ["n1", "n2"], ports=free_ports(2))
    for address, says in [
        ("n1=127.0.0.1:9", "this node"),
        ("n7=127.0.0.1:9", "unknown peer 'n7'"),
        ("n2", "ID=HOST:PORT"),
        ("n2=127.0.0.1:0", "1 to 65535"),
    ]:
        refused = replica(
            "serve", "--config", "cluster.toml", "--node", "n1", "--memory",
            f"--peer-address={address}", cwd=scratch_dir,
        )  # fmt: skip
        assert refused.returncode == 2, (address, refused.stderr)
        assert says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr
    helps = {
        "": "fault",
        "serve": "--peer-address",
        "cluster up": "--faults",
        "fault": "partition",
    }
    for command, says in helps.items():
        shown = replica(*command.split(), "--help", cwd=scratch_dir)
        assert shown.returncode == 0 and says in shown.stdout, shown.stdout


def test_faults_refuse_a_node_the_proxies_cannot_reach_at_loopback(scratch_dir: Path) -> None:
    (port,) = free_ports(1)
    config = scratch_dir / "cluster.toml"
    config.write_text(f'[[nodes]]\nid = "n1"\nhost = "192.0.2.7"\nport = {port}\n')
    refused = replica("cluster", "up", "--config", "cluster.toml", "--faults", cwd=scratch_dir)
    assert refused.returncode == 2, refused.stderr
    assert "n1 listens at 192.0.2.7" in refused.stderr
    assert not state_file_path(config).exists()
