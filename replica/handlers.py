"""Request handlers, one function per message type (placeholder until the core lands)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replica.crdt.malformed import Malformed, require_list, require_str
from replica.errors import ErrorCode, RequestError

if TYPE_CHECKING:
    from replica.node import Node

Body = dict[str, Any]


def init(node: Node, body: Body, src: str | None) -> Body:
    node_id = require_str(body, "node_id")
    node_ids = require_list(body.get("node_ids"), "field 'node_ids'")
    if not all(isinstance(n, str) for n in node_ids):
        raise Malformed("field 'node_ids' must be an array of strings")
    if node.node_id is None:
        node.bind(node_id, node_ids)
    elif node_id != node.node_id:
        raise RequestError(
            ErrorCode.PRECONDITION_FAILED, f"this node is {node.node_id!r}, not {node_id!r}"
        )
    return {"type": "init_ok"}


def _todo(node: Node, body: Body, src: str | None) -> Body:
    raise RequestError(ErrorCode.NOT_SUPPORTED, "not implemented yet")


mv_write = mv_read = mv_merge = _todo
kv_put = kv_get = kv_resolve = kv_merge = _todo
mvcc_put = mvcc_get = mvcc_snapshot = mvcc_gc = mvcc_merge = _todo
lww_write = lww_read = lww_merge = _todo
