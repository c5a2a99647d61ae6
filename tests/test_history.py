"""The history checker on synthetic histories: each kind of violation, and valid ones.

Replies are built the way a node builds them: from the core types, for the MV
register (a simulated cluster of `MVRegister` replicas), so the valid histories
are ones a correct cluster produces, and each violation is one edit of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replica.crdt.mv_register import MVRegister
from replica.crdt.version_vector import Dot, VersionVector, covers
from replica.testing.history import FinalRead, History, Report, check, final_read_requests

NODES = ("n1", "n2", "n3")


@dataclass
class SimulatedMV:
    """MV replicas of one key that record every client request in a history."""

    history: History = field(default_factory=History)
    replicas: dict[str, MVRegister] = field(
        default_factory=lambda: {n: MVRegister() for n in NODES}
    )
    actors: dict[str, str] = field(default_factory=dict)
    """The actor each node writes as (a durable node's `n1~<hex>`); its own id by default."""

    def write(
        self,
        node: str,
        value: Any,
        context: VersionVector | None = None,
        outcome: str = "ok",
    ) -> dict[str, Any]:
        """A write; `outcome` "ok", "lost" (ran, reply lost) or "dropped" (never ran)."""
        body: dict[str, Any] = {"type": "mv_write", "key": "k", "value": value}
        if context is not None:
            body["context"] = context
        i = self.history.invoke(node, body)
        reply: dict[str, Any] = {}
        if outcome != "dropped":
            reg, new = self.replicas[node].write(self.actors.get(node, node), value, context)
            self.replicas[node] = reg
            reply = {
                "type": "mv_write_ok",
                "vclock": new.vclock(),
                "context": reg.context(),
                "values": read(reg)["values"],
            }
        if outcome == "ok":
            self.history.ok(i, reply)
        else:
            self.history.unknown(i, "connection lost")
        return reply

    def sync(self, a: str, b: str) -> None:
        self.replicas[a] = self.replicas[a].merge(self.replicas[b])

    def converge(self) -> list[FinalRead]:
        for a in NODES:
            for b in NODES:
                self.sync(a, b)
        return [
            FinalRead(n, {"type": "mv_read", "key": "k"}, read(self.replicas[n])) for n in NODES
        ]


def read(reg: MVRegister) -> dict[str, Any]:
    values, context = reg.read_view()
    return {"type": "mv_read_ok", "values": values, "context": context}


def kinds(report: Report) -> set[str]:
    return {v.kind for v in report.violations}


def names(report: Report, index: int) -> bool:
    """Whether the report's text names operation `index`."""
    return f"#{index} " in report.text


# --- MV ---------------------------------------------------------------------------------------


def test_mv_superseded_and_concurrent_writes_pass() -> None:
    sim = SimulatedMV()
    first = sim.write("n1", "a")
    sim.write("n1", "b", first["context"])  # supersedes a
    sim.write("n2", "c")  # concurrent with b: two siblings
    report = check(sim.history, sim.converge())
    assert report.ok, report.text
    assert "no violation" in report.text


DURABLE_ACTORS = {"n1": "n1~5c0a7e", "n2": "n2~f09637", "n3": "n3~000001"}


def test_mv_writes_of_durable_actors_belong_to_their_nodes() -> None:
    """A durable node's dots name `<id>~<hex>`: its writes are matched to it, not called unknown."""
    sim = SimulatedMV(actors=DURABLE_ACTORS)
    first = sim.write("n1", "a")
    sim.write("n1", "b", first["context"])
    sim.write("n2", "c")
    sim.write("n3", "d", outcome="lost")
    report = check(sim.history, sim.converge())
    assert report.ok, report.text


def test_mv_indefinite_writes_that_did_or_did_not_land_pass() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a", outcome="lost")
    sim.write("n2", "b", outcome="dropped")
    sim.write("n3", "c", {}, outcome="lost")
    assert check(sim.history, sim.converge()).ok


@pytest.mark.parametrize("actors", [{}, DURABLE_ACTORS], ids=["plain ids", "durable actors"])
def test_mv_lost_acknowledged_write_is_named_with_its_dot(actors: dict[str, str]) -> None:
    sim = SimulatedMV(actors=actors)
    sim.write("n1", "a")
    sim.write("n2", "b")
    reads = sim.converge()
    for r in reads:
        r.reply["values"] = [s for s in r.reply["values"] if s["value"] != "b"]
    report = check(sim.history, reads)
    assert kinds(report) == {"lost write"}, report.text
    dot = f'["{actors.get("n2", "n2")}",1]'
    assert names(report, 1) and "n2" in report.text and dot in report.text


def test_mv_write_superseded_by_an_unacknowledged_write_with_its_context_passes() -> None:
    sim = SimulatedMV()
    first = sim.write("n1", "a")
    sim.write("n2", "b", first["context"], outcome="lost")
    sim.sync("n2", "n1")
    sim.write("n2", "b2", first["context"], outcome="dropped")
    assert check(sim.history, sim.converge()).ok


def test_mv_write_with_an_empty_context_does_not_excuse_a_lost_write() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a")
    sim.write("n1", "b", {})
    reads = sim.converge()
    for r in reads:
        r.reply["values"] = [s for s in r.reply["values"] if s["value"] != "a"]
    report = check(sim.history, reads)
    assert kinds(report) == {"lost write"} and names(report, 0), report.text


def test_mv_never_written_value_is_named() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a")
    reads = sim.converge()
    for r in reads:
        r.reply["values"].append({"value": "ghost", "vclock": {"n3": 7}, "dot": ["n3", 7]})
    report = check(sim.history, reads)
    assert kinds(report) == {"never written"}, report.text
    assert '"ghost"' in report.text and '["n3",7]' in report.text


def test_mv_dot_used_twice_is_named() -> None:
    history = History()
    for value in ("a", "b"):
        i = history.invoke("n1", {"type": "mv_write", "key": "k", "value": value})
        history.ok(i, {"type": "mv_write_ok", "vclock": {"n1": 1}, "context": {"n1": 1}})
    one = {"value": "a", "vclock": {"n1": 1}, "dot": ["n1", 1]}
    reads = [FinalRead(n, {"type": "mv_read", "key": "k"}, {"values": [one]}) for n in NODES]
    report = check(history, reads)
    assert kinds(report) == {"dot used twice"}, report.text
    assert names(report, 0) and names(report, 1)


def test_mv_dot_shown_with_another_value_is_named() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a")
    reads = sim.converge()
    reads[2].reply["values"][0]["value"] = "z"
    report = check(sim.history, reads)
    assert "dot used twice" in kinds(report) and "nodes disagree" in kinds(report)
    assert names(report, 0) and "n3" in report.text


def test_mv_nodes_that_disagree_are_named() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a")
    sim.write("n2", "b")
    reads = [FinalRead(n, {"type": "mv_read", "key": "k"}, read(sim.replicas[n])) for n in NODES]
    report = check(sim.history, reads)
    assert "nodes disagree" in kinds(report) and "lost write" in kinds(report)
    assert "n1" in report.text and "n3" in report.text


def test_a_key_without_a_final_read_is_reported() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a")
    report = check(sim.history, [])
    assert kinds(report) == {"unread"} and names(report, 0)


@dataclass(frozen=True)
class Step:
    kind: str  # "write" or "sync"
    node: str
    other: str
    context: str  # "none", "empty" or "reply"
    outcome: str


steps = st.builds(
    Step,
    kind=st.sampled_from(["write", "write", "sync"]),
    node=st.sampled_from(NODES),
    other=st.sampled_from(NODES),
    context=st.sampled_from(["none", "empty", "reply"]),
    outcome=st.sampled_from(["ok", "ok", "ok", "lost", "dropped"]),
)


def run(program: list[Step], indefinite: bool) -> SimulatedMV:
    sim = SimulatedMV()
    last: dict[str, VersionVector] = {}  # each node's client keeps its last reply's context
    for i, step in enumerate(program):
        if step.kind == "sync":
            sim.sync(step.node, step.other)
            continue
        context = {"none": None, "empty": {}, "reply": last.get(step.other, {})}[step.context]
        reply = sim.write(step.node, f"v{i}", context, step.outcome if indefinite else "ok")
        if reply:
            last[step.node] = reply["context"]
    return sim


@settings(max_examples=200, deadline=None)
@given(st.lists(steps, max_size=25))
def test_random_valid_mv_histories_pass(program: list[Step]) -> None:
    sim = run(program, indefinite=True)
    report = check(sim.history, sim.converge())
    assert report.ok, report.text


@settings(max_examples=200, deadline=None)
@given(st.lists(steps, min_size=1, max_size=25), st.data())
def test_random_mv_histories_that_drop_a_visible_sibling_are_caught(
    program: list[Step], data: st.DataObject
) -> None:
    sim = run(program, indefinite=False)
    reads = sim.converge()
    visible = reads[0].reply["values"]
    if not visible:
        return
    victim = data.draw(st.sampled_from(visible))
    node = data.draw(st.sampled_from(reads))
    node.reply["values"] = [s for s in node.reply["values"] if s["dot"] != victim["dot"]]
    report = check(sim.history, reads)
    assert "lost write" in kinds(report), report.text
    assert f"{victim['dot'][0]} mv_write" in report.text


# --- LWW --------------------------------------------------------------------------------------


def lww_history(*writes: tuple[str, Any, int, str]) -> History:
    """Writes `(node, value, timestamp, outcome)`; an ok write is stamped with its node."""
    history = History()
    for node, value, ts, outcome in writes:
        i = history.invoke(node, {"type": "lww_write", "key": "f", "value": value})
        if outcome == "ok":
            history.ok(i, {"type": "lww_write_ok", "timestamp": ts, "replica": node})
        elif outcome == "timeout":
            history.fail(i, 0, "timed out")
        else:
            history.fail(i, 22, "too far ahead")
    return history


def lww_reads(value: Any, ts: int, replica: str) -> list[FinalRead]:
    reply = {"type": "lww_read_ok", "value": value, "timestamp": ts, "replica": replica}
    return [FinalRead(n, {"type": "lww_read", "key": "f"}, dict(reply)) for n in NODES]


def test_lww_greatest_write_wins_and_passes() -> None:
    history = lww_history(("n1", "a", 5, "ok"), ("n2", "b", 5, "ok"), ("n3", "c", 3, "ok"))
    assert check(history, lww_reads("b", 5, "n2")).ok


def test_lww_an_unacknowledged_write_may_win() -> None:
    history = lww_history(("n1", "a", 5, "ok"), ("n3", "x", 0, "timeout"))
    assert check(history, lww_reads("x", 9, "n3")).ok
    assert check(history, lww_reads("a", 5, "n1")).ok


def test_lww_lost_winner_is_named() -> None:
    history = lww_history(("n1", "a", 5, "ok"), ("n2", "b", 7, "ok"))
    report = check(history, lww_reads("a", 5, "n1"))
    assert kinds(report) == {"lost write"} and names(report, 1), report.text


def test_lww_value_of_a_definitely_failed_write_is_never_written() -> None:
    history = lww_history(("n1", "a", 5, "ok"), ("n2", "b", 0, "refused"))
    report = check(history, lww_reads("b", 9, "n2"))
    assert "never written" in kinds(report), report.text
    assert '"b"' in report.text


def test_lww_absent_key_after_an_acknowledged_write_and_disagreement() -> None:
    history = lww_history(("n1", "a", 5, "ok"))
    reads = lww_reads("a", 5, "n1")
    reads[1] = FinalRead("n2", reads[1].request, {"type": "error", "code": 20})
    report = check(history, reads)
    assert kinds(report) == {"lost write", "nodes disagree"}, report.text
    assert names(report, 0)


# --- MVCC -------------------------------------------------------------------------------------


def mvcc_history(*puts: tuple[str, Any, int, str], gc: int | None = None) -> History:
    history = History()
    for node, value, ts, outcome in puts:
        i = history.invoke(node, {"type": "mvcc_put", "key": "x", "value": value})
        if outcome == "ok":
            history.ok(i, {"type": "mvcc_put_ok", "version": 1, "timestamp": ts})
        else:
            history.unknown(i, "connection lost")
    if gc is not None:
        i = history.invoke("n1", {"type": "mvcc_gc", "before": gc})
        history.ok(i, {"type": "mvcc_gc_ok", "removed": 1, "horizon": gc})
    return history


def mvcc_reads(history: History, versions: dict[int, Any]) -> list[FinalRead]:
    """Every node's answers to `final_read_requests`, from a map of timestamp to value."""
    out = []
    for request in final_read_requests(history):
        at = request.get("read_timestamp")
        below = [ts for ts in versions if at is None or ts <= at]
        if below:
            ts = max(below)
            reply = {"type": "mvcc_get_ok", "value": versions[ts], "as_of_timestamp": ts}
        else:
            reply = {"type": "error", "code": 20}
        out += [FinalRead(n, request, dict(reply)) for n in NODES]
    return out


def test_mvcc_every_version_readable_passes() -> None:
    history = mvcc_history(("n1", "a", 10, "ok"), ("n2", "b", 20, "ok"), ("n3", "c", 0, "lost"))
    assert check(history, mvcc_reads(history, {10: "a", 20: "b", 30: "c"})).ok
    assert check(history, mvcc_reads(history, {10: "a", 20: "b"})).ok


def test_mvcc_lost_version_is_named() -> None:
    history = mvcc_history(("n1", "a", 10, "ok"), ("n2", "b", 20, "ok"))
    report = check(history, mvcc_reads(history, {20: "b"}))
    assert kinds(report) == {"lost write"} and names(report, 0), report.text


def test_mvcc_version_below_the_gc_horizon_may_be_gone() -> None:
    history = mvcc_history(("n1", "a", 10, "ok"), ("n2", "b", 20, "ok"), gc=15)
    assert check(history, mvcc_reads(history, {20: "b"})).ok


def test_mvcc_never_written_value_and_a_lost_newest_are_named() -> None:
    history = mvcc_history(("n1", "a", 10, "ok"), ("n2", "b", 20, "ok"))
    report = check(history, mvcc_reads(history, {10: "a", 20: "ghost"}))
    assert kinds(report) == {"never written"} and '"ghost"' in report.text, report.text
    reads = [r for r in mvcc_reads(history, {10: "a", 20: "b"})]
    newest = {"type": "mvcc_get_ok", "value": "a", "as_of_timestamp": 10}
    reads[0] = FinalRead("n1", reads[0].request, newest)
    report = check(history, reads)
    assert {"lost write", "nodes disagree"} == kinds(report) and names(report, 1), report.text


# --- client-clocked KV ------------------------------------------------------------------------


def kv_history(*puts: tuple[str, Any, list[int], str]) -> History:
    history = History()
    for node, value, clock, status in puts:
        i = history.invoke(node, {"type": "kv_put", "key": "u", "value": value, "clock": clock})
        if status == "unknown":
            history.unknown(i)
        else:
            history.ok(i, {"type": "kv_put_ok", "status": status})
    return history


def kv_reads(*siblings: tuple[Any, list[int]]) -> list[FinalRead]:
    values = [{"value": v, "clock": c} for v, c in siblings]
    return [FinalRead(n, {"type": "kv_get", "key": "u"}, {"values": values}) for n in NODES]


def test_kv_dominated_and_concurrent_puts_pass() -> None:
    history = kv_history(
        ("n1", "a", [1, 0], "written"),
        ("n1", "b", [2, 0], "written"),
        ("n2", "c", [0, 1], "conflict"),
        ("n2", "stale", [1], "rejected"),
        ("n3", "d", [0, 0, 1], "unknown"),
    )
    assert check(history, kv_reads(("b", [2]), ("c", [0, 1, 0]))).ok
    assert check(history, kv_reads(("b", [2]), ("c", [0, 1]), ("d", [0, 0, 1]))).ok


def test_kv_lost_put_and_never_written_sibling_are_named() -> None:
    history = kv_history(("n1", "a", [1, 0], "written"), ("n2", "c", [0, 1], "conflict"))
    report = check(history, kv_reads(("a", [1, 0])))
    assert kinds(report) == {"lost write"} and names(report, 1), report.text
    report = check(history, kv_reads(("a", [1]), ("c", [0, 1]), ("zz", [5, 5])))
    assert kinds(report) == {"never written"} and '"zz"' in report.text


def test_kv_nodes_that_disagree_are_named() -> None:
    history = kv_history(("n1", "a", [1, 0], "written"), ("n2", "c", [0, 1], "conflict"))
    reads = kv_reads(("a", [1]), ("c", [0, 1]))
    reads[2] = FinalRead("n3", reads[2].request, {"values": [{"value": "a", "clock": [1]}]})
    report = check(history, reads)
    assert {"nodes disagree", "lost write"} == kinds(report) and "n3" in report.text


# --- counter ----------------------------------------------------------------------------------


def counter_history(*adds: tuple[str, int, str]) -> History:
    history = History()
    for node, delta, outcome in adds:
        i = history.invoke(node, {"type": "counter_add", "key": "c", "delta": delta})
        if outcome == "ok":
            history.ok(i, {"type": "counter_add_ok", "value": 0})
        elif outcome == "crash":
            history.fail(i, 13, "crash")
        else:
            history.fail(i, 22, "total too large")
    return history


def counter_reads(*values: int) -> list[FinalRead]:
    return [
        FinalRead(n, {"type": "counter_read", "key": "c"}, {"value": v})
        for n, v in zip(NODES, values, strict=True)
    ]


@pytest.mark.parametrize("total", [4, 9, 1, 6])
def test_counter_total_of_acknowledged_and_some_unfinished_deltas_passes(total: int) -> None:
    history = counter_history(
        ("n1", 3, "ok"),
        ("n2", 1, "ok"),
        ("n3", 5, "crash"),
        ("n1", -3, "crash"),
        ("n2", 100, "refused"),
    )
    assert check(history, counter_reads(total, total, total)).ok


@pytest.mark.parametrize("total", [3, 8, 104, 0])
def test_counter_wrong_total_is_named(total: int) -> None:
    history = counter_history(
        ("n1", 3, "ok"), ("n2", 1, "ok"), ("n3", 5, "crash"), ("n2", 100, "refused")
    )
    report = check(history, counter_reads(total, total, total))
    assert kinds(report) == {"wrong total"} and names(report, 0), report.text


def test_counter_bounds_with_many_unfinished_deltas_and_disagreement() -> None:
    history = counter_history(*[("n1", 2**i, "crash") for i in range(20)], ("n2", 1, "ok"))
    assert check(history, counter_reads(7, 7, 7)).ok
    report = check(history, counter_reads(7, 7, 8))
    assert kinds(report) == {"nodes disagree"}, report.text
    assert kinds(check(history, counter_reads(0, 0, 0))) == {"wrong total"}


# --- the record -------------------------------------------------------------------------------


def test_an_operation_ends_once_and_error_codes_say_if_definite() -> None:
    history = History()
    i = history.invoke("n1", {"type": "counter_add", "key": "c", "delta": 1})
    history.complete(i, {"type": "error", "code": 0, "text": "timeout"})
    with pytest.raises(ValueError, match="already ended"):
        history.ok(i, {"type": "counter_add_ok", "value": 1})
    assert history.operations[i].indefinite
    j = history.invoke("n1", {"type": "counter_add", "key": "c", "delta": 1})
    history.complete(j, {"type": "error", "code": 12, "text": "bad"})
    assert not history.operations[j].may_have_happened
    k = history.invoke("n1", {"type": "counter_add", "key": "c", "delta": 1})
    history.fail(k, 12, "proxy dropped it", definite=False)
    assert history.operations[k].indefinite
    history.invoke("n2", {"type": "counter_add", "key": "c", "delta": 1})  # never ended
    assert check(history, counter_reads(0, 3, 2)).violations[0].kind == "nodes disagree"
    assert "#3 n2 counter_add" in history.operations[3].describe()


def test_final_read_requests_cover_every_key_and_mvcc_version() -> None:
    history = mvcc_history(("n1", "a", 10, "ok"), ("n2", "b", 20, "ok"))
    history.invoke("n1", {"type": "mv_write", "key": "k", "value": 1})
    history.invoke("n1", {"type": "mv_read", "key": "j"})
    assert final_read_requests(history) == [
        {"type": "mvcc_get", "key": "x"},
        {"type": "mvcc_get", "key": "x", "read_timestamp": 10},
        {"type": "mvcc_get", "key": "x", "read_timestamp": 20},
        {"type": "mv_read", "key": "k"},
        {"type": "mv_read", "key": "j"},
    ]


def test_mv_a_visible_unfinished_write_excuses_only_what_its_vclock_covers() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a")
    sim.write("n2", "b", outcome="lost")  # landed, and n2 had not seen a
    reads = sim.converge()
    for r in reads:
        r.reply["values"] = [s for s in r.reply["values"] if s["value"] != "a"]
    report = check(sim.history, reads)
    assert kinds(report) == {"lost write"} and names(report, 0), report.text
    sim.write("n3", "c", outcome="dropped")  # an invisible one may have replaced anything
    assert check(sim.history, reads).ok


@settings(max_examples=200, deadline=None)
@given(st.lists(steps, min_size=1, max_size=25), st.data())
def test_random_histories_with_unfinished_writes_that_drop_a_sibling_are_caught(
    program: list[Step], data: st.DataObject
) -> None:
    sim = run(program, indefinite=True)
    reads = sim.converge()
    shown = [s["value"] for s in reads[0].reply["values"]]
    acked = [s for s in reads[0].reply["values"] if s["value"] in _acked_values(sim.history)]
    if not acked:
        return
    victim = data.draw(st.sampled_from(acked))
    for r in reads:
        r.reply["values"] = [s for s in r.reply["values"] if s["dot"] != victim["dot"]]
    report = check(sim.history, reads)
    # Only an unfinished write may have replaced it: one whose context covers its dot,
    # or one without a context that is not visible.
    dot = Dot(*victim["dot"])
    excused = any(
        covers(op.body["context"], dot) if "context" in op.body else op.body["value"] not in shown
        for op in sim.history.operations
        if op.indefinite
    )
    assert excused or "lost write" in kinds(report), report.text


def _acked_values(history: History) -> set[Any]:
    return {op.body["value"] for op in history.operations if op.ok}


def test_counter_read_that_fails_is_a_wrong_total() -> None:
    history = counter_history(("n1", 3, "ok"))
    reads = counter_reads(3, 3, 3)
    reads[0] = FinalRead("n1", reads[0].request, {"type": "error", "code": 13, "text": "crash"})
    assert kinds(check(history, reads)) == {"wrong total", "nodes disagree"}


def test_kv_resolve_replaces_the_siblings_it_dominates() -> None:
    history = kv_history(("n1", "a", [1, 0], "written"), ("n2", "c", [0, 1], "conflict"))
    i = history.invoke("n1", {"type": "kv_resolve", "key": "u", "value": "ac", "clock": [1, 1]})
    history.ok(i, {"type": "kv_resolve_ok", "status": "resolved"})
    assert check(history, kv_reads(("ac", [1, 1]))).ok
    report = check(history, kv_reads(("a", [1]), ("c", [0, 1])))
    assert kinds(report) == {"lost write"} and names(report, 2), report.text


def test_mvcc_an_acknowledged_put_may_lose_to_another_at_the_same_timestamp() -> None:
    history = mvcc_history(("n1", "a", 10, "ok"), ("n2", "b", 10, "ok"))
    assert check(history, mvcc_reads(history, {10: "b"})).ok


def test_lww_an_unfinished_write_with_its_own_timestamp_must_match_it() -> None:
    history = lww_history(("n1", "a", 5, "ok"))
    i = history.invoke("n2", {"type": "lww_write", "key": "f", "value": "b", "timestamp": 9})
    history.unknown(i, "timeout")
    assert check(history, lww_reads("b", 9, "n2")).ok
    report = check(history, lww_reads("b", 8, "n2"))
    assert kinds(report) == {"never written"}, report.text
