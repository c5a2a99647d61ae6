"""Cluster files (`cluster.toml`) for nodes on loopback, written as a user would write them.

Contract: `write_cluster_view` writes one file listing `(node_id, port)` in
order, each node with `data_dir = "data/<id>"` beside the file and the given
`[cluster]` settings; `write_cluster` does the same on fresh ports.  Settings
are written as TOML scalars (integers, strings, booleans), so the node checks
them exactly as it checks a hand-written file.  `add_tls` appends a `[tls]`
table to such a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from replica.testing.ports import LOOPBACK, free_ports

Setting = int | str | bool


def toml_scalar(value: Setting) -> str:
    """`value` as TOML: a JSON string literal is a valid TOML basic string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value)


def write_cluster(
    directory: Path,
    node_ids: Iterable[str] = ("n1",),
    *,
    ports: Iterable[int] | None = None,
    resp_ports: dict[str, int] | None = None,
    **cluster: Setting,
) -> Path:
    """A cluster.toml in `directory` for `node_ids` on loopback; returns its path.

    `resp_ports` gives the nodes it names a Redis-protocol port.
    """
    ids = list(node_ids)
    port_list = list(ports) if ports is not None else free_ports(len(ids))
    nodes = list(zip(ids, port_list, strict=True))
    return write_cluster_view(directory / "cluster.toml", nodes, resp_ports, **cluster)


def add_tls(path: Path, table: Mapping[str, str]) -> None:
    """Append `table` to the cluster file at `path` as its `[tls]`."""
    lines = ["[tls]", *(f"{name} = {toml_scalar(value)}" for name, value in table.items()), ""]
    with path.open("a") as file:
        file.write("\n".join(lines))


def write_cluster_view(
    path: Path,
    nodes: Iterable[tuple[str, int]],
    resp_ports: dict[str, int] | None = None,
    **cluster: Setting,
) -> Path:
    """A cluster file at `path` listing `(node_id, port)` in order, on loopback."""
    lines = ["[cluster]", *(f"{name} = {toml_scalar(value)}" for name, value in cluster.items())]
    lines.append("")
    for node_id, port in nodes:
        lines += [
            "[[nodes]]",
            f"id = {toml_scalar(node_id)}",
            f'host = "{LOOPBACK}"',
            f"port = {port}",
            f"data_dir = {toml_scalar(f'data/{node_id}')}",
        ]
        if resp_ports is not None and node_id in resp_ports:
            lines.append(f"resp_port = {resp_ports[node_id]}")
        lines.append("")
    path.write_text("\n".join(lines))
    return path
