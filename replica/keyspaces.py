"""The node's state: four separate keyspaces (placeholder until the core lands)."""

from __future__ import annotations


class Keyspaces:
    def __init__(self, node_id: str, *, mvcc_retention_ms: int) -> None:
        self.node_id = node_id
        self.mvcc_retention_ms = mvcc_retention_ms
