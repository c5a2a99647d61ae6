"""The cluster secret's file, `replica keygen`, and protected mode, through the real CLI.

A secret file others may read, or none at all where one is named, stops a
node with exit 2 and one line naming the file; `REPLICA_SECRET_FILE`
overrides the cluster file's `secret_file`.  A node bound beyond loopback
starts only with a secret or with `insecure = true`, which it warns about.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from replica.cli.config import SECRET_FILE_ENV, is_loopback
from replica.testing import LOOPBACK, NodeProcess, free_ports, replica_command

RUN_TIMEOUT = 30


def cluster_file(directory: Path, host: str, port: int, **cluster: str | bool) -> Path:
    lines = ["[cluster]"]
    for name, value in cluster.items():
        lines.append(f"{name} = {str(value).lower() if isinstance(value, bool) else repr(value)}")
    lines += ["", "[[nodes]]", 'id = "n1"', f'host = "{host}"', f"port = {port}", ""]
    path = directory / "cluster.toml"
    path.write_text("\n".join(lines).replace("'", '"'))
    return path


def serve(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = replica_command("serve", "--config", str(config), "--node", "n1", "--memory")
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )


def keygen(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        replica_command("keygen", str(path)),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


@pytest.fixture
def started() -> Iterator[list[NodeProcess]]:
    nodes: list[NodeProcess] = []
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()
            print(node.stderr_text())


def start(nodes: list[NodeProcess], config: Path, port: int, **env: str) -> NodeProcess:
    node = NodeProcess(config, "n1", LOOPBACK, port, memory=True, env=env)
    nodes.append(node)
    node.start().wait_ready()
    return node


def test_keygen_writes_a_secret_only_its_owner_reads_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    made = keygen(path)
    assert made.returncode == 0 and made.stdout.strip() == str(path), made
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n") and int(text, 16) > 0
    again = keygen(path)
    assert again.returncode == 2 and "exists" in again.stderr and str(path) in again.stderr
    assert path.read_text() == text
    other = tmp_path / "other"
    keygen(other)
    assert other.read_text() != text


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(0o644, "readable or writable by group or others (mode 0644)"), (0o620, "(mode 0620)")],
)
def test_a_secret_file_others_may_read_or_write_stops_the_node(
    tmp_path: Path, mode: int, expected: str
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 64 + "\n")
    secret.chmod(mode)
    result = serve(cluster_file(tmp_path, LOOPBACK, free_ports(1)[0], secret_file="secret"))
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line and str(secret) in line and expected in line, line


@pytest.mark.parametrize(
    ("content", "expected"), [(None, "No such file"), ("", "empty"), ("\n", "empty")]
)
def test_a_missing_or_empty_secret_file_stops_the_node(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    secret = tmp_path / "secret"
    if content is not None:
        secret.write_text(content)
        secret.chmod(0o600)
    result = serve(cluster_file(tmp_path, LOOPBACK, free_ports(1)[0], secret_file="secret"))
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line and str(secret) in line and expected in line, line


def test_the_environment_overrides_the_secret_file(
    tmp_path: Path, started: list[NodeProcess]
) -> None:
    good = tmp_path / "good"
    keygen(good)
    (port,) = free_ports(1)
    config = cluster_file(tmp_path, LOOPBACK, port, secret_file="missing")
    assert serve(config).returncode == 2
    node = start(started, config, port, **{SECRET_FILE_ENV: str(good)})
    assert node.running
    bad = tmp_path / "bad"
    bad.write_text("x\n")
    bad.chmod(0o644)
    result = serve(cluster_file(tmp_path, LOOPBACK, port), env={SECRET_FILE_ENV: str(bad)})
    assert result.returncode == 2 and str(bad) in result.stderr, result


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.2.1", "::1", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.com", "127.example"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not is_loopback(host)


def test_protected_mode_refuses_a_public_host_without_a_secret(tmp_path: Path) -> None:
    result = serve(cluster_file(tmp_path, "0.0.0.0", free_ports(1)[0]))
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line and "0.0.0.0, not a loopback address" in line, line
    for way_out in ("secret_file", "[tls]", "insecure = true", str(tmp_path / "cluster.toml")):
        assert way_out in line, line


def test_protected_mode_lets_a_node_with_a_secret_start(
    tmp_path: Path, started: list[NodeProcess]
) -> None:
    keygen(tmp_path / "secret")
    (port,) = free_ports(1)
    start(started, cluster_file(tmp_path, "0.0.0.0", port, secret_file="secret"), port)


def test_insecure_starts_a_public_node_without_a_secret_and_warns(
    tmp_path: Path, started: list[NodeProcess]
) -> None:
    (port,) = free_ports(1)
    node = start(started, cluster_file(tmp_path, "0.0.0.0", port, insecure=True), port)
    assert "WARNING replica.cli.serve: [cluster] insecure = true" in node.stderr_text()
    assert "no secret_file, no TLS" in node.stderr_text()
