"""A history checker for replica: record what clients did, check what the cluster kept.

The idea of Knossos and Elle, for a store whose conflicts are siblings rather
than aborts.  A test records every client operation as it goes (invoke, then
ok, a definite error or an unknown outcome), lets the cluster converge, reads
every key on every node (`final_read_requests` lists those reads), and hands
both to `check`.  The report names each broken rule and the operations
involved: an acknowledged write that vanished without a write or delete that
had seen it, a value seen again after an acknowledged delete covered it, a
value nobody wrote, a dot issued twice, nodes that disagree, a counter total
no set of additions and deletes explains.  The rules themselves, one per
keyspace, are in `replica.testing.history_rules`.  A request's `w` or `r` is
recorded with it and changes nothing in the rules: an acknowledged write is
one, whatever its `w`.

Pure and synchronous (no sockets, no clock), so it checks recorded histories
as readily as live ones; it uses nothing of replica but its clock types.

Contract of the record: every `invoke` is ended at most once, by `ok`, `fail`
or `unknown`.  An operation never ended counts as unknown.  Error codes 0
(timeout, or too few answers for `w`), 11 (fewer than `w` nodes connected: the
write is kept and spreads) and 13 (crash) are indefinite, like a lost
connection: the write may have happened.  Every other error is definite:
nothing changed.  A final read answered 0 or 11 (too few nodes for its `r`)
says nothing of the node's state and is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from replica.testing.history_record import INDEFINITE_CODES, Operation, Outcome, Violation
from replica.testing.history_rules import RULES

__all__ = [
    "FinalRead",
    "History",
    "Operation",
    "Outcome",
    "Report",
    "Violation",
    "check",
    "final_read_requests",
]

WRITE_TYPES = frozenset(
    {"mv_write", "kv_put", "kv_resolve", "lww_write", "mvcc_put", "counter_add"}
    | {"mv_delete", "kv_delete", "lww_delete", "mvcc_delete", "counter_delete"}
)
"""The requests that change a key: its writes and deletes."""
READ_TYPES = {
    "mv": "mv_read",
    "kv": "kv_get",
    "lww": "lww_read",
    "mvcc": "mvcc_get",
    "counter": "counter_read",
}
"""The read that shows a key of each keyspace after convergence."""


class FinalRead(NamedTuple):
    """One node's read of one key after convergence: the request sent and the reply body."""

    node: str
    request: Mapping[str, Any]
    reply: Mapping[str, Any]


class History:
    """The operations clients invoked, in invocation order, with their outcomes."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def invoke(self, node: str, body: Mapping[str, Any]) -> int:
        """Record a request about to be sent to `node`; returns its index.

        `node` is the id of the node that serves the request: an MV write's dot
        is that node's, so the checker matches dots to writes by it.
        """
        op_type = str(body.get("type"))
        key = body.get("key")
        index = len(self.operations)
        self.operations.append(
            Operation(index, node, op_type, key if isinstance(key, str) else None, dict(body))
        )
        return index

    def ok(self, index: int, reply: Mapping[str, Any]) -> None:
        """The request was acknowledged with this reply body."""
        self._end(index, Outcome.OK).reply = dict(reply)

    def fail(self, index: int, code: int, text: str = "", definite: bool | None = None) -> None:
        """The request got error `code`; `definite` defaults from the code (0, 11, 13 are not)."""
        if definite is None:
            definite = code not in INDEFINITE_CODES
        op = self._end(index, Outcome.FAILED if definite else Outcome.UNKNOWN)
        op.code, op.text = code, text

    def unknown(self, index: int, reason: str = "") -> None:
        """No reply will come (timeout, connection lost): the request may or may not have run."""
        self._end(index, Outcome.UNKNOWN).text = reason

    def complete(self, index: int, reply: Mapping[str, Any]) -> None:
        """End with a reply body as the node sent it: an error body fails, any other is ok."""
        if reply.get("type") == "error":
            self.fail(index, int(reply.get("code", 13)), str(reply.get("text", "")))
        else:
            self.ok(index, reply)

    def _end(self, index: int, outcome: Outcome) -> Operation:
        op = self.operations[index]
        if op.outcome is not Outcome.PENDING:
            raise ValueError(f"operation #{index} already ended: {op.outcome.value}")
        op.outcome = outcome
        op.ended = len(self.operations)
        return op

    def touched_keys(self) -> list[tuple[str, str]]:
        """Every (keyspace, key) a request touched, in order of first use."""
        seen: dict[tuple[str, str], None] = {}
        for op in self.operations:
            family = _family(op.type)
            if op.key is not None and family in READ_TYPES:
                seen.setdefault((family, op.key), None)
        return list(seen)


@dataclass(frozen=True)
class Report:
    """What `check` found; `ok` when nothing."""

    violations: tuple[Violation, ...]
    operations: int
    keys: int

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def text(self) -> str:
        head = f"{self.operations} operations on {self.keys} keys: "
        if self.ok:
            return head + "no violation"
        lines = [head + f"{len(self.violations)} violation(s)"]
        lines += [v.describe() for v in self.violations]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.text


def final_read_requests(history: History) -> list[dict[str, Any]]:
    """The reads `check` needs from every node: each key's read, and for MVCC one more
    per acknowledged version or tombstone, at its timestamp."""
    out: list[dict[str, Any]] = []
    for family, key in history.touched_keys():
        out.append({"type": READ_TYPES[family], "key": key})
        if family == "mvcc":
            stamps = sorted(
                {
                    op.reply["timestamp"]
                    for op in history.operations
                    if op.type in ("mvcc_put", "mvcc_delete")
                    and op.key == key
                    and op.ok
                    and op.reply
                }
            )
            out += [{"type": "mvcc_get", "key": key, "read_timestamp": ts} for ts in stamps]
    return out


def check(history: History, final_reads: Iterable[FinalRead | tuple[Any, Any, Any]]) -> Report:
    """Check every key the history touched against every node's final read of it."""
    reads: dict[tuple[str, str], dict[str, Any]] = {}
    for node, request, reply in final_reads:
        if reply.get("type") == "error" and reply.get("code") in _UNANSWERED:
            continue
        family = _family(str(request.get("type")))
        place = (family, str(request.get("key")))
        if family == "mvcc":
            at = reads.setdefault(place, {}).setdefault(node, {})
            at[request.get("read_timestamp")] = dict(reply)
        else:
            reads.setdefault(place, {})[node] = dict(reply)
    by_key: dict[tuple[str, str], list[Operation]] = {k: [] for k in history.touched_keys()}
    for op in history.operations:
        family = _family(op.type)
        if op.key is not None and family in READ_TYPES:
            by_key[(family, op.key)].append(op)
        elif op.type == "mvcc_gc":  # a collection applies to every MVCC key
            for k, ops in by_key.items():
                if k[0] == "mvcc":
                    ops.append(op)
    violations: list[Violation] = []
    for (family, key), ops in by_key.items():
        got = reads.get((family, key), {})
        writes = [op for op in ops if op.type in WRITE_TYPES and op.ok]
        if writes and not got:
            violations.append(
                Violation("unread", family, key, "no node's final read was given", (writes[0],))
            )
            continue
        violations += RULES[family](key, ops, got)
    return Report(tuple(violations), len(history.operations), len(by_key))


_UNANSWERED = frozenset({0, 11})
"""Error codes of a read that too few nodes answered: no state to check."""


def _family(op_type: str) -> str:
    return op_type.split("_", 1)[0]
