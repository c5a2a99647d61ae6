"""Hypothesis strategies for reachable MV register states.

A state is reachable when clients and replicas of a small simulated cluster
produce it: writes without a context, with the context of an earlier reply
(from any replica) or with an empty context, deletes with the context of an
earlier reply or of what the replica holds, reads, and whole-state merges.
Contexts are only ever ones a register's `context()` returned; a hand-made
context can claim a history no replica has, and the merge laws are not
promised for such states.

`mv_registers()` draws every register of one test case from the same shared
program (a snapshot of some replica at some step), so the states a law
combines are states of one cluster: two independent programs would both
invent dot `("n1", 1)` with different values, which no real cluster does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import strategies as st

from replica.crdt.mv_register import MVRegister
from replica.crdt.version_vector import VersionVector

REPLICAS = ("n1", "n2", "n3")


def descends(a: VersionVector, b: VersionVector) -> bool:
    """Whether history `a` contains all of history `b`: the order the laws are stated in."""
    return all(a.get(node, 0) >= counter for node, counter in b.items())


ContextKind = Literal["none", "empty", "reply"]


@dataclass(frozen=True)
class Write:
    """A client writes at `replica`.

    With `context == "reply"`, `reply` picks one of the replies given so far
    (modulo their number); with no reply yet the write goes without context.
    """

    replica: int
    context: ContextKind = "none"
    reply: int = 0


@dataclass(frozen=True)
class Read:
    replica: int


@dataclass(frozen=True)
class Delete:
    """A client deletes at `replica` what a reply showed (`reply` picks it, as for `Write`),
    or, with `here` or no reply yet, everything the replica holds (`MVREG DEL`)."""

    replica: int
    here: bool = False
    reply: int = 0


@dataclass(frozen=True)
class Merge:
    """`target` takes in `source`'s whole state."""

    target: int
    source: int


Step = Write | Read | Merge | Delete


@dataclass(frozen=True)
class Reply:
    """What a client learnt from a read or a write: the values and the context to hand back."""

    values: tuple[Any, ...]
    context: VersionVector


def node_name(replica: int) -> str:
    return f"n{replica + 1}"


def write_value(number: int) -> Any:
    """A unique value per write, alternating kinds so both ints and strings are exercised."""
    return number if number % 2 == 0 else f"w{number}"


@dataclass
class Cluster:
    """Replicas running a program; `replies` grows with every read and write."""

    size: int = len(REPLICAS)
    states: list[MVRegister] = field(default_factory=list)
    replies: list[Reply] = field(default_factory=list)
    writes: int = 0

    def __post_init__(self) -> None:
        if not self.states:
            self.states = [MVRegister()] * self.size

    def context_for(self, step: Write) -> VersionVector | None:
        if step.context == "empty":
            return {}
        if step.context == "reply" and self.replies:
            return self.replies[step.reply % len(self.replies)].context
        return None

    def apply(self, step: Step) -> None:
        if isinstance(step, Merge):
            self.states[step.target] = self.states[step.target].merge(self.states[step.source])
            return
        register = self.states[step.replica]
        if isinstance(step, Delete):
            if step.here or not self.replies:
                context = register.context()
            else:
                context = self.replies[step.reply % len(self.replies)].context
            register = register.delete(context)
            self.states[step.replica] = register
        elif isinstance(step, Write):
            value = write_value(self.writes)
            self.writes += 1
            register, _ = register.write(node_name(step.replica), value, self.context_for(step))
            self.states[step.replica] = register
        self.replies.append(Reply(tuple(register.values()), register.context()))


def steps(size: int = len(REPLICAS)) -> st.SearchStrategy[Step]:
    replica = st.integers(0, size - 1)
    write = st.builds(
        Write,
        replica,
        st.sampled_from(["none", "empty", "reply", "reply"]),
        st.integers(0, 1_000),
    )
    delete = st.builds(Delete, replica, st.booleans(), st.integers(0, 1_000))
    return st.one_of(
        write,
        write,
        delete,
        st.builds(Read, replica),
        st.builds(Merge, replica, replica),
    )


def mv_programs(
    size: int = len(REPLICAS), min_steps: int = 0, max_steps: int = 30
) -> st.SearchStrategy[list[Step]]:
    return st.lists(steps(size), min_size=min_steps, max_size=max_steps)


def snapshots(program: list[Step], size: int = len(REPLICAS)) -> list[MVRegister]:
    """Every replica's register after every step (the initial empty ones included)."""
    cluster = Cluster(size)
    seen = list(cluster.states)
    for step in program:
        cluster.apply(step)
        seen.extend(cluster.states)
    return seen


@st.composite
def mv_registers(draw: st.DrawFn, universe: str | None = "mv") -> MVRegister:
    """Some replica's register at some point of a random program.

    Draws sharing a `universe` name in one test case come from one program;
    `universe=None` gives each draw a program of its own.
    """
    programs = mv_programs(min_steps=4)
    program = draw(programs if universe is None else st.shared(programs, key=universe))
    states = snapshots(program)
    last = len(states) - 1
    # half the time one of the final states, where registers are largest
    index = draw(st.one_of(st.integers(last - len(REPLICAS) + 1, last), st.integers(0, last)))
    return states[index]
