"""The history checker's rules for deletes and for `w`/`r` outcomes, on synthetic histories.

MV and counter histories come from simulated replicas of the core types
(`MVRegister.delete`, `PNCounter.reset`), so the valid ones are what a correct
cluster produces; each violation is one edit of them: a deleted value shown
again (resurrected), a concurrent write dropped, a wrong total.  The random
histories check soundness: a correct cluster with deletes is never reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from replica.crdt.pn_counter import PNCounter
from replica.testing.history import FinalRead, History, Outcome, check, final_read_requests
from tests.test_history import NODES, SimulatedMV, kinds, names, read


@dataclass
class SimulatedMVWithDeletes(SimulatedMV):
    """`SimulatedMV` whose clients also delete with a context."""

    def delete(self, node: str, context: dict[str, int], outcome: str = "ok") -> dict[str, Any]:
        """A delete; `outcome` "ok", "lost" (ran, reply lost) or "dropped" (never ran)."""
        i = self.history.invoke(node, {"type": "mv_delete", "key": "k", "context": context})
        reply: dict[str, Any] = {}
        if outcome != "dropped":
            self.replicas[node] = self.replicas[node].delete(context)
            reply = {"type": "mv_delete_ok", **read(self.replicas[node])}
        if outcome == "ok":
            self.history.ok(i, reply)
        else:
            self.history.unknown(i, "connection lost")
        return reply


def without(reads: list[FinalRead], value: Any) -> list[FinalRead]:
    for r in reads:
        r.reply["values"] = [s for s in r.reply["values"] if s["value"] != value]
    return reads


# --- MV -------------------------------------------------------------------------------------


def test_mv_deleted_value_gone_passes_and_seen_again_is_resurrected_naming_both() -> None:
    sim = SimulatedMVWithDeletes()
    written = sim.write("n1", "a")
    sim.sync("n2", "n1")
    before = read(sim.replicas["n2"])["values"]  # n2 still holds "a"
    sim.delete("n1", written["context"])
    reads = sim.converge()
    assert all(r.reply["values"] == [] for r in reads)
    report = check(sim.history, reads)
    assert report.ok, report.text

    for r in reads:
        r.reply["values"] = before
    report = check(sim.history, reads)
    assert kinds(report) == {"resurrected"}, report.text
    assert names(report, 0) and names(report, 1)


def test_mv_write_concurrent_with_a_delete_survives_and_its_loss_is_caught() -> None:
    sim = SimulatedMVWithDeletes()
    written = sim.write("n1", "a")
    sim.write("n3", "c")  # n3 never saw "a": its dot is outside the delete's context
    sim.delete("n1", written["context"])
    reads = sim.converge()
    assert [s["value"] for s in reads[0].reply["values"]] == ["c"]
    report = check(sim.history, reads)
    assert report.ok, report.text

    report = check(sim.history, without(reads, "c"))
    assert kinds(report) == {"lost write"} and names(report, 1), report.text


def test_mv_delete_of_unknown_outcome_may_or_may_not_have_removed_the_value() -> None:
    for outcome in ("lost", "dropped"):
        sim = SimulatedMVWithDeletes()
        written = sim.write("n1", "a")
        sim.delete("n1", written["context"], outcome=outcome)
        reads = sim.converge()
        assert bool(reads[0].reply["values"]) == (outcome == "dropped")
        report = check(sim.history, reads)
        assert report.ok, report.text


@dataclass(frozen=True)
class Step:
    kind: str  # "write", "delete" or "sync"
    node: str
    other: str
    outcome: str


steps = st.builds(
    Step,
    kind=st.sampled_from(["write", "write", "delete", "sync", "sync"]),
    node=st.sampled_from(NODES),
    other=st.sampled_from(NODES),
    outcome=st.sampled_from(["ok", "ok", "ok", "lost", "dropped"]),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(steps, max_size=30))
def test_random_valid_mv_histories_with_deletes_pass(program: list[Step]) -> None:
    """Deletes with the context a node shows (its own or one read elsewhere) never alarm."""
    sim = SimulatedMVWithDeletes()
    for i, step in enumerate(program):
        if step.kind == "sync":
            sim.sync(step.node, step.other)
        elif step.kind == "write":
            sim.write(step.node, f"v{i}", outcome=step.outcome)
        else:
            context = read(sim.replicas[step.other])["context"]
            sim.delete(step.node, context, outcome=step.outcome)
    report = check(sim.history, sim.converge())
    assert report.ok, report.text


# --- LWW --------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """A history built by hand: each request with the reply a correct node gives."""

    history: History = field(default_factory=History)

    def ok(self, node: str, body: dict[str, Any], reply: dict[str, Any]) -> int:
        i = self.history.invoke(node, {"key": "x", **body})
        self.history.ok(i, reply)
        return i

    def error(self, node: str, body: dict[str, Any], code: int) -> int:
        i = self.history.invoke(node, {"key": "x", **body})
        self.history.complete(i, {"type": "error", "code": code, "text": "not confirmed"})
        return i

    def check(self, replies: dict[Any, dict[str, Any]]) -> Any:
        """`check` with every node reading each request of `final_read_requests` as given."""
        reads = [
            FinalRead(node, request, replies[request.get("read_timestamp")])
            for request in final_read_requests(self.history)
            for node in NODES
        ]
        return check(self.history, reads)


ABSENT = {"type": "error", "code": 20, "text": "no value"}


def lww_write(rec: Recorded, node: str, value: Any, ts: int) -> int:
    body = {"type": "lww_write", "value": value, "timestamp": ts}
    return rec.ok(node, body, {"type": "lww_write_ok", "timestamp": ts, "replica": node})


def lww_delete(rec: Recorded, node: str, ts: int) -> int:
    body = {"type": "lww_delete", "timestamp": ts}
    return rec.ok(node, body, {"type": "lww_delete_ok", "timestamp": ts, "replica": node})


def lww_value(value: Any, ts: int, replica: str) -> dict[str, Any]:
    return {"type": "lww_read_ok", "value": value, "timestamp": ts, "replica": replica}


def test_lww_winning_delete_reads_absent_and_a_value_under_it_is_resurrected() -> None:
    rec = Recorded()
    lww_write(rec, "n1", "a", 10)
    lww_delete(rec, "n2", 20)
    assert rec.check({None: ABSENT}).ok
    report = rec.check({None: lww_value("a", 10, "n1")})
    assert kinds(report) == {"resurrected"} and names(report, 0) and names(report, 1)


def test_lww_delete_wins_at_its_own_pair_and_loses_to_a_later_write() -> None:
    rec = Recorded()
    lww_write(rec, "n1", "a", 10)
    lww_delete(rec, "n1", 10)
    assert rec.check({None: ABSENT}).ok
    assert kinds(rec.check({None: lww_value("a", 10, "n1")})) == {"resurrected"}
    lww_write(rec, "n3", "b", 30)
    assert rec.check({None: lww_value("b", 30, "n3")}).ok
    report = rec.check({None: ABSENT})
    assert kinds(report) == {"lost write"} and names(report, 2), report.text


def test_lww_an_unknown_delete_may_explain_an_absent_key_but_nothing_else_does() -> None:
    rec = Recorded()
    lww_write(rec, "n1", "a", 10)
    assert kinds(rec.check({None: ABSENT})) == {"lost write"}
    rec.error("n2", {"type": "lww_delete", "timestamp": 20}, 0)
    assert rec.check({None: ABSENT}).ok
    assert rec.check({None: lww_value("a", 10, "n1")}).ok


# --- MVCC -------------------------------------------------------------------------------------


def mvcc(rec: Recorded, node: str, kind: str, ts: int, value: Any = None) -> int:
    body = {"type": f"mvcc_{kind}", "timestamp": ts}
    if kind == "put":
        body["value"] = value
    reply = {"type": f"mvcc_{kind}_ok", "version": 1, "timestamp": ts}
    return rec.ok(node, body, reply)


def version(value: Any, ts: int) -> dict[str, Any]:
    return {"type": "mvcc_get_ok", "value": value, "as_of_timestamp": ts}


def test_mvcc_reads_at_and_after_a_tombstone_are_absent_until_a_later_version() -> None:
    rec = Recorded()
    mvcc(rec, "n1", "put", 10, "a")
    mvcc(rec, "n2", "delete", 20)
    assert {r.get("read_timestamp") for r in final_read_requests(rec.history)} == {None, 10, 20}
    assert rec.check({None: ABSENT, 10: version("a", 10), 20: ABSENT}).ok

    report = rec.check({None: version("a", 10), 10: version("a", 10), 20: version("a", 10)})
    assert kinds(report) == {"resurrected"} and names(report, 1), report.text

    mvcc(rec, "n3", "put", 30, "b")
    newest = version("b", 30)
    assert rec.check({None: newest, 10: version("a", 10), 20: ABSENT, 30: newest}).ok
    report = rec.check({None: newest, 10: version("a", 10), 20: version("a", 10), 30: newest})
    assert kinds(report) == {"resurrected"} and names(report, 1), report.text
    report = rec.check({None: ABSENT, 10: version("a", 10), 20: ABSENT, 30: ABSENT})
    assert kinds(report) == {"lost write"} and names(report, 2), report.text


# --- KV ---------------------------------------------------------------------------------------


def kv_put(rec: Recorded, node: str, value: Any, clock: list[int]) -> int:
    body = {"type": "kv_put", "value": value, "clock": clock}
    return rec.ok(node, body, {"type": "kv_put_ok", "status": "written", "siblings": 1})


def kv_delete(rec: Recorded, node: str, clock: list[int], status: str = "deleted") -> int:
    reply = {"type": "kv_delete_ok", "status": status, "siblings": 0}
    return rec.ok(node, {"type": "kv_delete", "clock": clock}, reply)


def siblings(*pairs: tuple[Any, list[int]]) -> dict[str, Any]:
    return {"type": "kv_get_ok", "values": [{"value": v, "clock": c} for v, c in pairs]}


def test_kv_deleted_clocks_may_be_gone_and_must_not_come_back() -> None:
    rec = Recorded()
    kv_put(rec, "n1", "a", [1])
    kv_put(rec, "n2", "b", [0, 1])  # concurrent with the delete's clock: survives
    kv_delete(rec, "n1", [2])
    assert rec.check({None: siblings(("b", [0, 1]))}).ok
    report = rec.check({None: siblings(("a", [1]), ("b", [0, 1]))})
    assert kinds(report) == {"resurrected"} and names(report, 0) and names(report, 2)
    report = rec.check({None: siblings()})
    assert kinds(report) == {"lost write"} and names(report, 1), report.text


def test_kv_a_rejected_delete_excuses_nothing() -> None:
    rec = Recorded()
    kv_put(rec, "n1", "a", [3])
    kv_delete(rec, "n1", [2], status="rejected")
    assert rec.check({None: siblings(("a", [3]))}).ok
    assert kinds(rec.check({None: siblings()})) == {"lost write"}


# --- counter ----------------------------------------------------------------------------------


def counter_reads(value: int) -> dict[Any, dict[str, Any]]:
    return {None: {"type": "counter_read_ok", "value": value}}


def test_counter_delete_takes_away_what_its_node_saw_and_a_wrong_total_is_caught() -> None:
    rec = Recorded()
    rec.ok("n1", {"type": "counter_add", "delta": 5}, {"type": "counter_add_ok", "value": 5})
    rec.ok("n1", {"type": "counter_delete"}, {"type": "counter_delete_ok", "value": 0})
    rec.ok("n2", {"type": "counter_add", "delta": 3}, {"type": "counter_add_ok", "value": 3})
    assert rec.check(counter_reads(3)).ok
    assert rec.check(counter_reads(8)).ok  # the delete may have run where the 5 had not arrived
    for wrong in (2, 9, -5):
        report = rec.check(counter_reads(wrong))
        assert kinds(report) == {"wrong total"} and "(deletes)" in report.text


def test_counter_deletes_on_both_sides_of_a_partition_may_take_a_total_twice() -> None:
    """Two deletes that each saw the same +5 leave -5: allowed, overlapping or one after
    the other."""
    for overlapping in (False, True):
        rec = Recorded()
        rec.ok("n1", {"type": "counter_add", "delta": 5}, {"type": "counter_add_ok", "value": 5})
        first = rec.history.invoke("n1", {"type": "counter_delete", "key": "x"})
        if not overlapping:
            rec.history.ok(first, {"type": "counter_delete_ok", "value": 0})
        second = rec.history.invoke("n2", {"type": "counter_delete", "key": "x"})
        rec.history.ok(second, {"type": "counter_delete_ok", "value": 0})
        if overlapping:
            rec.history.ok(first, {"type": "counter_delete_ok", "value": 0})
        report = rec.check(counter_reads(-5))
        assert report.ok, report.text
        # Overlapping deletes may have seen each other in either order: the range widens.
        widened = "(overlapping deletes)" in rec.check(counter_reads(10**6)).text
        assert widened == overlapping


@dataclass(frozen=True)
class CounterStep:
    kind: str  # "add", "delete" or "sync"
    node: str
    other: str
    delta: int
    outcome: str


counter_steps = st.builds(
    CounterStep,
    kind=st.sampled_from(["add", "add", "delete", "sync", "sync"]),
    node=st.sampled_from(NODES),
    other=st.sampled_from(NODES),
    delta=st.integers(-20, 20),
    outcome=st.sampled_from(["ok", "ok", "ok", "lost", "dropped"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(counter_steps, max_size=30))
def test_random_valid_counter_histories_with_deletes_pass(program: list[CounterStep]) -> None:
    """Replicas of `PNCounter` adding, resetting and merging in any order: never a false alarm."""
    rec = Recorded()
    replicas = {n: PNCounter() for n in NODES}
    for step in program:
        if step.kind == "sync":
            replicas[step.node] = replicas[step.node].merge(replicas[step.other])
            continue
        body: dict[str, Any] = {"type": f"counter_{step.kind}", "key": "x"}
        if step.kind == "add":
            body["delta"] = step.delta
        i = rec.history.invoke(step.node, body)
        if step.outcome != "dropped":
            here = replicas[step.node]
            replicas[step.node] = (
                here.add(step.node, step.delta) if step.kind == "add" else here.reset(step.node)
            )
        if step.outcome == "ok":
            value = replicas[step.node].value
            rec.history.ok(i, {"type": f"counter_{step.kind}_ok", "value": value})
        else:
            rec.history.unknown(i, "connection lost")
    total = PNCounter()
    for replica in replicas.values():
        total = total.merge(replica)
    report = rec.check(counter_reads(total.value))
    assert report.ok, report.text


@settings(max_examples=300, deadline=None)
@given(st.lists(counter_steps, max_size=30), st.randoms(use_true_random=False))
def test_random_counter_histories_with_deletes_that_overlap_pass(
    program: list[CounterStep], rnd: Any
) -> None:
    """A delete may take effect well after it was asked for, other deletes in between."""
    rec = Recorded()
    replicas = {n: PNCounter() for n in NODES}
    waiting: list[tuple[int, str]] = []  # deletes asked for, not yet run
    for step in program:
        if step.kind == "sync":
            replicas[step.node] = replicas[step.node].merge(replicas[step.other])
        elif step.kind == "add":
            body = {"type": "counter_add", "key": "x", "delta": step.delta}
            i = rec.history.invoke(step.node, body)
            replicas[step.node] = replicas[step.node].add(step.node, step.delta)
            rec.history.ok(i, {"type": "counter_add_ok", "value": replicas[step.node].value})
        elif step.outcome == "ok" or not waiting:
            waiting.append(
                (rec.history.invoke(step.node, {"type": "counter_delete", "key": "x"}), step.node)
            )
        else:
            i, node = waiting.pop(rnd.randrange(len(waiting)))
            replicas[node] = replicas[node].reset(node)
            rec.history.ok(i, {"type": "counter_delete_ok", "value": 0})
    for i, node in waiting:
        replicas[node] = replicas[node].reset(node)
        rec.history.ok(i, {"type": "counter_delete_ok", "value": 0})
    total = PNCounter()
    for replica in replicas.values():
        total = total.merge(replica)
    report = rec.check(counter_reads(total.value))
    assert report.ok, report.text


# --- w and r ----------------------------------------------------------------------------------


def test_writes_answered_11_or_0_may_or_may_not_appear() -> None:
    for code in (0, 11):
        sim = SimulatedMV()
        body = {"type": "mv_write", "key": "k", "value": "maybe", "w": 3}
        i = sim.history.invoke("n1", body)
        sim.history.complete(i, {"type": "error", "code": code, "text": "not confirmed"})
        assert sim.history.operations[i].outcome is Outcome.UNKNOWN
        assert check(sim.history, sim.converge()).ok  # it did not land
        sim.replicas["n1"], _ = sim.replicas["n1"].write("n1", "maybe", None)
        assert check(sim.history, sim.converge()).ok  # it did (kept, and spread)


def test_a_missing_acknowledged_w2_write_is_caught_and_shown_with_its_w() -> None:
    sim = SimulatedMV()
    reg, new = sim.replicas["n2"].write("n2", "sure", None)
    sim.replicas["n2"] = reg
    body = {"type": "mv_write", "key": "k", "value": "sure", "w": 2}
    i = sim.history.invoke("n2", body)
    values, context = reg.read_view()
    reply = {"type": "mv_write_ok", "vclock": new.vclock(), "context": context, "values": values}
    sim.history.ok(i, reply)
    assert check(sim.history, sim.converge()).ok
    report = check(sim.history, without(sim.converge(), "sure"))
    assert kinds(report) == {"lost write"} and "w=2" in report.text, report.text


def test_a_final_read_too_few_nodes_answered_is_left_out() -> None:
    sim = SimulatedMV()
    sim.write("n1", "a")
    reads = sim.converge()
    reads[2] = FinalRead(
        "n3",
        {"type": "mv_read", "key": "k", "r": 3},
        {"type": "error", "code": 11, "text": "fewer than r nodes connected"},
    )
    assert check(sim.history, reads).ok
    unanswered = [FinalRead(r.node, r.request, reads[2].reply) for r in reads]
    assert kinds(check(sim.history, unanswered)) == {"unread"}


def test_mv_delete_of_an_empty_context_excuses_nothing() -> None:
    """A delete whose context covers nothing removes nothing: the write stays required."""
    sim = SimulatedMVWithDeletes()
    sim.write("n1", "a")
    sim.delete("n2", {})
    assert check(sim.history, sim.converge()).ok
    report = check(sim.history, without(sim.converge(), "a"))
    assert kinds(report) == {"lost write"} and names(report, 0)
