"""One key's sibling set as several deltas, each under a byte bound.

Merge of a type with siblings is union then drop the obsolete, so any subset
of a state's siblings is a valid delta, and the merge of all of them, in any
order, is the whole state.
"""

from __future__ import annotations

from typing import Any

import orjson


def split_siblings(key: str, field: str, siblings: list[Any], max_bytes: int) -> list[bytes]:
    """`{key, <field>}` deltas that together carry every sibling, each under `max_bytes`.

    A single sibling over the bound makes a delta of its own.
    """
    head = orjson.dumps({"key": key})[:-1] + b',"' + field.encode() + b'":['
    parts: list[bytes] = []
    group: list[bytes] = []
    size = len(head) + 2
    for sibling in siblings:
        encoded = orjson.dumps(sibling)
        if group and size + len(encoded) + 1 > max_bytes:
            parts.append(head + b",".join(group) + b"]}")
            group, size = [], len(head) + 2
        group.append(encoded)
        size += len(encoded) + 1
    parts.append(head + b",".join(group) + b"]}")
    return parts
