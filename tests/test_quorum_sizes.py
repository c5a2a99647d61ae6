"""`w` and `r` values, in requests and in `[cluster]`: what each asks for, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from replica.cli.config import ConfigError, parse_cluster
from replica.crdt.malformed import Malformed
from replica.replication.quorum import quorum_size, replicas

NODES = [{"id": f"n{i}", "host": "127.0.0.1", "port": 7000 + i} for i in range(1, 4)]


@pytest.mark.parametrize(
    ("value", "size", "needed"),
    [(1, 3, 1), (3, 3, 3), ("one", 3, 1), ("quorum", 3, 2), ("quorum", 4, 3), ("all", 5, 5)],
)
def test_each_form_names_a_number_of_nodes(value: Any, size: int, needed: int) -> None:
    assert quorum_size(value, "w", size) == needed


@pytest.mark.parametrize("value", [0, -1, 4, "most", "ALL", True, 2.0, None, [2], {"n": 2}])
def test_anything_else_is_malformed_naming_the_field(value: Any) -> None:
    with pytest.raises(Malformed, match="'r'"):
        quorum_size(value, "r", 3)


def test_every_node_holds_every_key() -> None:
    assert replicas(["n1", "n2", "n3"], "mv", "k") == ["n1", "n2", "n3"]


def test_the_cluster_file_takes_w_r_and_the_timeout_and_hands_them_to_the_node() -> None:
    config = parse_cluster(
        {"cluster": {"w": "all", "r": 2, "request_timeout_ms": 500}, "nodes": NODES}
    )
    settings = config.node_settings()
    assert (settings.w, settings.r, settings.request_timeout_ms) == ("all", 2, 500)
    defaults = parse_cluster({"nodes": NODES}).node_settings()
    assert (defaults.w, defaults.r, defaults.request_timeout_ms) == (1, 1, 2000)


@pytest.mark.parametrize(
    ("cluster", "words"),
    [
        ({"w": 4}, "w (4) is more than the 3 nodes"),
        ({"r": 0}, "r must be"),
        ({"w": "most"}, "w must be"),
        ({"r": True}, "r must be"),
        ({"request_timeout_ms": 0}, "request_timeout_ms must be greater than 0"),
    ],
)
def test_a_bad_w_r_or_timeout_in_the_file_is_refused(cluster: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_cluster({"cluster": cluster, "nodes": NODES})
