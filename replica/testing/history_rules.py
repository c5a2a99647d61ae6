"""The rules a converged history must satisfy, one function per data type.

Each rule gets one key's operations, in invocation order, and every node's
final read of that key (the reply body of `mv_read`, `kv_get`, `lww_read`,
`mvcc_get` or `counter_read`), and returns the violations it finds.  A rule
never guesses against the system: an operation whose outcome is unknown (a
timeout, a lost connection, error 0, 11 or 13) may or may not have happened,
so it can explain what a read shows but is never required to show up; a
delete that may have happened may explain what is missing, and one that was
acknowledged makes what it covered gone for good.  Soundness first, as in
Knossos and Elle: a correct node must never be reported.

The rules live by family: `history_mv` (MV register), `history_registers`
(LWW, MVCC), `history_counted` (KV, counter); the record types in
`history_record`, re-exported here.

Source: PROTOCOL.md for the semantics of each keyspace and its deletes; the
dotted version vectors of Preguiça et al. (2010) for what "superseded" means
for an MV write.
"""

from __future__ import annotations

from replica.testing.history_counted import check_counter, check_kv, counter_range
from replica.testing.history_mv import check_mv, mv_superseded
from replica.testing.history_record import (
    INDEFINITE_CODES,
    Operation,
    Outcome,
    Reads,
    Rule,
    Violation,
    mv_dot,
    owner,
)
from replica.testing.history_registers import check_lww, check_mvcc

__all__ = [
    "INDEFINITE_CODES",
    "RULES",
    "Operation",
    "Outcome",
    "Reads",
    "Rule",
    "Violation",
    "check_counter",
    "check_kv",
    "check_lww",
    "check_mv",
    "check_mvcc",
    "counter_range",
    "mv_dot",
    "mv_superseded",
    "owner",
]

RULES: dict[str, Rule] = {
    "mv": check_mv,
    "lww": check_lww,
    "mvcc": check_mvcc,
    "kv": check_kv,
    "counter": check_counter,
}
"""The rule of each keyspace, by the prefix of its message types."""
