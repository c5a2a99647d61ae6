"""cluster.toml: what loads, and one clear line for everything that does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from replica.cli.config import ClusterConfig, ConfigError, NodeConfig, load_cluster

REPO = Path(__file__).resolve().parent.parent

NODE = '[[nodes]]\nid = "n1"\nhost = "127.0.0.1"\nport = 7001\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    return message


def test_the_repository_cluster_file_loads() -> None:
    config = load_cluster(REPO / "cluster.toml")
    assert config.gossip_interval_ms == 200
    assert config.node_ids == ["n1", "n2", "n3"]
    assert [n.port for n in config.nodes] == [7001, 7002, 7003]
    assert all(n.host == "127.0.0.1" for n in config.nodes)
    assert config.node("n2").data_dir == str(REPO / "data" / "n2")


def test_defaults_and_a_full_file(tmp_path: Path) -> None:
    config = load_cluster(write(tmp_path, NODE))
    assert config == ClusterConfig(
        gossip_interval_ms=200,
        max_line_bytes=1 << 20,
        mvcc_retention_ms=3_600_000,
        nodes=(NodeConfig("n1", "127.0.0.1", 7001, None),),
    )
    text = (
        "[cluster]\ngossip_interval_ms = 50\nmax_line_bytes = 4096\nmvcc_retention_ms = 0\n"
        + NODE
        + '[[nodes]]\nid = "n2"\nhost = "127.0.0.1"\nport = 7002\ndata_dir = "/abs/n2"\n'
    )
    config = load_cluster(write(tmp_path, text))
    assert (config.gossip_interval_ms, config.max_line_bytes, config.mvcc_retention_ms) == (
        50,
        4096,
        0,
    )
    assert config.node("n2") == NodeConfig("n2", "127.0.0.1", 7002, "/abs/n2")
    assert config.peers("n1") == {"n2": ("127.0.0.1", 7002)}


def test_a_relative_data_dir_is_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "cluster.toml").write_text(NODE + 'data_dir = "data/n1"\n')
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        config = load_cluster("conf/cluster.toml")
    finally:
        os.chdir(cwd)
    assert config.node("n1").data_dir == str(sub / "data" / "n1")


def test_node_settings_come_from_the_cluster_section(tmp_path: Path) -> None:
    config = load_cluster(write(tmp_path, "[cluster]\nmax_line_bytes = 4096\n" + NODE))
    settings = config.node_settings()
    assert settings.max_line_bytes == 4096
    assert settings.mvcc_retention_ms == 3_600_000


def test_max_clock_skew_ms_defaults_to_a_minute_and_reaches_the_node(tmp_path: Path) -> None:
    assert load_cluster(write(tmp_path, NODE)).node_settings().max_clock_skew_ms == 60_000
    config = load_cluster(write(tmp_path, "[cluster]\nmax_clock_skew_ms = 0\n" + NODE))
    assert config.max_clock_skew_ms == 0
    assert config.node_settings().max_clock_skew_ms == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_cluster(tmp_path / "absent.toml")


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_cluster(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, NODE)
    path.chmod(0)
    with pytest.raises(ConfigError, match="cannot read: Permission denied"):
        load_cluster(path)


def test_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, NODE + "port = = 3\n")
    assert "invalid TOML" in message
    assert "line 5" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_bytes(b"[cluster]\n# caf\xe9\n" + NODE.encode())
    with pytest.raises(ConfigError, match=r"UTF-8|invalid TOML"):
        load_cluster(path)


@pytest.mark.parametrize(
    "text",
    ["", "[cluster]\ngossip_interval_ms = 200\n", "nodes = []\n"],
    ids=["empty", "cluster-only", "empty-array"],
)
def test_no_nodes(tmp_path: Path, text: str) -> None:
    assert "no nodes" in error_of(tmp_path, text)


def test_nodes_must_be_tables(tmp_path: Path) -> None:
    assert "array of tables" in error_of(tmp_path, "nodes = 5\n")
    assert "node 1 must be a table" in error_of(tmp_path, "nodes = [5]\n")


def test_unknown_node_id(tmp_path: Path) -> None:
    config = load_cluster(write(tmp_path, NODE))
    with pytest.raises(ConfigError) as caught:
        config.node("n9")
    assert str(caught.value) == "unknown node id 'n9' (the file lists n1)"


def test_duplicate_ids(tmp_path: Path) -> None:
    text = NODE + NODE.replace("7001", "7002")
    assert "duplicate node id 'n1'" in error_of(tmp_path, text)


def test_duplicate_addresses(tmp_path: Path) -> None:
    text = NODE + NODE.replace('"n1"', '"n2"')
    assert "nodes 'n1' and 'n2' both use 127.0.0.1:7001" in error_of(tmp_path, text)


@pytest.mark.parametrize("port", ["0", "65536", "-1", '"7001"', "true", "7001.0"])
def test_bad_port(tmp_path: Path, port: str) -> None:
    text = NODE.replace("port = 7001", f"port = {port}")
    message = error_of(tmp_path, text)
    assert "node 'n1': port must be an integer from 1 to 65535" in message


def test_the_highest_port_is_allowed(tmp_path: Path) -> None:
    assert load_cluster(write(tmp_path, NODE.replace("7001", "65535"))).nodes[0].port == 65535


def test_unknown_field_in_cluster(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[cluster]\ngossip_interval = 5\n" + NODE)
    assert "[cluster]: unknown field 'gossip_interval'" in message
    assert "allowed: gossip_interval_ms, max_line_bytes, mvcc_retention_ms" in message


def test_unknown_field_in_a_node(tmp_path: Path) -> None:
    message = error_of(tmp_path, NODE + 'datadir = "x"\n')
    assert (
        "node 'n1': unknown field 'datadir' (allowed: id, host, port, data_dir, resp_port, "
        "tls_cert_file, tls_key_file)" in message
    )


def test_unknown_top_level_field(tmp_path: Path) -> None:
    assert "top level: unknown field 'node'" in error_of(tmp_path, '[node]\nid = "n1"\n' + NODE)


@pytest.mark.parametrize(
    ("field", "needle"),
    [
        ('id = 1\nhost = "h"\nport = 1\n', "node 1: id must be a non-empty string, not 1"),
        ('id = ""\nhost = "h"\nport = 1\n', "node 1: id must be a non-empty string"),
        ('host = "h"\nport = 1\n', "node 1: missing field 'id'"),
        ('id = "n1"\nport = 1\n', "node 'n1': missing field 'host'"),
        ('id = "n1"\nhost = "h"\n', "node 'n1': missing field 'port'"),
        ('id = "n1"\nhost = ["h"]\nport = 1\n', "node 'n1': host must be a non-empty string"),
        ('id = "n1"\nhost = "h"\nport = 1\ndata_dir = 3\n', "data_dir must be a non-empty string"),
    ],
)
def test_wrong_node_fields(tmp_path: Path, field: str, needle: str) -> None:
    assert needle in error_of(tmp_path, "[[nodes]]\n" + field)


def test_cluster_must_be_a_table(tmp_path: Path) -> None:
    assert "'cluster' must be a table" in error_of(tmp_path, "cluster = 1\n" + NODE)


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ('gossip_interval_ms = "200"', "gossip_interval_ms must be an integer, not '200'"),
        ("gossip_interval_ms = 2.5", "gossip_interval_ms must be an integer"),
        ("gossip_interval_ms = true", "gossip_interval_ms must be an integer, not True"),
        ("gossip_interval_ms = 0", "gossip_interval_ms must be greater than 0, not 0"),
        ("max_line_bytes = -5", "max_line_bytes must be greater than 0, not -5"),
        ("max_line_bytes = 0", "max_line_bytes must be greater than 0"),
        ("mvcc_retention_ms = -1", "mvcc_retention_ms must be 0 or more, not -1"),
        ("max_clock_skew_ms = -1", "max_clock_skew_ms must be 0 or more, not -1"),
        ("max_clock_skew_ms = 1.5", "max_clock_skew_ms must be an integer"),
    ],
)
def test_bad_cluster_settings(tmp_path: Path, setting: str, needle: str) -> None:
    assert needle in error_of(tmp_path, f"[cluster]\n{setting}\n" + NODE)
