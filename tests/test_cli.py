"""The command line as users run it: `python -m replica ...` in a child process."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from replica.cli.main import main
from tests.harness import LOOPBACK, NodeProcess, free_ports, replica_command, write_cluster

NODE = '[[nodes]]\nid = "n1"\nhost = "127.0.0.1"\nport = {port}\n'


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        replica_command(*args), cwd=cwd, capture_output=True, text=True, timeout=30
    )


BAD_CONFIGS = {
    "syntax-error": "[cluster\n",
    "no-nodes": "[cluster]\ngossip_interval_ms = 200\n",
    "duplicate-ids": NODE + NODE.replace("{port}", "{port2}"),
    "duplicate-addresses": NODE + NODE.replace('"n1"', '"n2"'),
    "bad-port": NODE.replace("{port}", "70000"),
    "port-is-a-string": NODE.replace("{port}", '"{port}"'),
    "unknown-cluster-field": "[cluster]\ngossip_ms = 1\n" + NODE,
    "unknown-node-field": NODE + "weight = 3\n",
    "zero-interval": "[cluster]\ngossip_interval_ms = 0\n" + NODE,
}


@pytest.mark.parametrize("name", BAD_CONFIGS)
def test_serve_with_a_bad_config_exits_2_with_one_line(tmp_path: Path, name: str) -> None:
    port, port2 = free_ports(2)
    path = tmp_path / "cluster.toml"
    path.write_text(BAD_CONFIGS[name].format(port=port, port2=port2))
    result = run("serve", "--config", str(path), "--node", "n1")
    assert_config_error(result)


def test_serve_with_a_missing_config_file(tmp_path: Path) -> None:
    result = run("serve", "--config", str(tmp_path / "absent.toml"), "--node", "n1")
    assert_config_error(result)
    assert "No such file" in result.stderr


def test_serve_with_an_unknown_node_id(tmp_path: Path) -> None:
    config = write_cluster(tmp_path, ["n1", "n2"])
    result = run("serve", "--config", str(config), "--node", "n7")
    assert_config_error(result)
    assert "unknown node id 'n7'" in result.stderr


def test_cluster_up_with_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text("[cluster]\n")
    assert_config_error(run("cluster", "up", "--config", str(path)))


def assert_config_error(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("replica: config error: ")
    assert result.stdout == ""


def test_help() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("serve", "stdio", "cluster", "status"):
        assert command in result.stdout
    for args in (["serve", "--help"], ["stdio", "--help"], ["cluster", "up", "--help"]):
        result = run(*args)
        assert result.returncode == 0, args
        assert "usage: replica" in result.stdout


@pytest.mark.parametrize(
    "args",
    [[], ["bogus"], ["serve"], ["stdio", "--max-line-bytes", "0"], ["stdio", "--log-level", "x"]],
    ids=["no-command", "unknown-command", "serve-without-node", "zero-limit", "bad-level"],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert main(args) == 2


def test_main_help_returns_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage: replica" in capsys.readouterr().out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_logs_its_address_and_stops_cleanly_on_a_signal(tmp_path: Path, sig: int) -> None:
    (port,) = free_ports(1)
    config = write_cluster(tmp_path, ["n1"], ports=[port])
    node = NodeProcess(config, "n1", LOOPBACK, port)
    try:
        node.start().wait_ready()
        node.signal(sig)
        assert node.wait() == 0
    finally:
        node.kill()
    log = node.stderr_text()
    assert f"n1 listening on {LOOPBACK}:{port}" in log
    assert "Traceback" not in log


def test_serve_on_a_port_in_use_fails_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_cluster(tmp_path, ["n1"], ports=[port])
        result = run("serve", "--config", str(config), "--node", "n1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"cannot listen on {LOOPBACK}:{port}" in result.stderr


def test_the_console_script_is_installed() -> None:
    import shutil
    import sys

    script = shutil.which("replica", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("replica ")
