"""Alternating rounds: how two or more servers are measured on a machine that drifts.

Round after round, each server is measured in turn (A, B, A, B, ...), and
before each run every other server must be idle, its child processes
included, so that work one left behind (a durable node's checkpoint after its
writes) never counts against the next.  `stats.paired_ratios` then sets round
i of one against round i of the other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from .machine import tree_cpu_seconds
from .session import NodeHandle, Session, wait_idle
from .stats import PairedRatios, paired_ratios

SETTLE_TIMEOUT = 10.0  # the most a run waits for the other servers to go idle

T = TypeVar("T")


@dataclass
class Round(Generic[T]):
    """One server's run in one round."""

    server: str
    round: int
    result: T


async def alternate(
    s: Session,
    servers: Mapping[str, NodeHandle],
    rounds: int,
    measure: Callable[[str, NodeHandle, int], Awaitable[T]],
) -> list[Round[T]]:
    """`rounds` rounds of `measure(name, server, round)` on every server in turn.

    Odd rounds take the servers in order and even rounds in reverse, so going
    first or second in a round (a warmer cache, a neighbour's leftover work)
    favours each variant equally.
    """
    runs: list[Round[T]] = []
    for round_no in range(1, rounds + 1):
        order = list(servers.items())
        if round_no % 2 == 0:
            order.reverse()
        for name, server in order:
            for other_name, other in servers.items():
                if other is not server and other.process is not None:
                    s.phase = f"waiting for {other_name} to be idle"
                    await wait_idle(s, other, SETTLE_TIMEOUT, tree_cpu_seconds)
            s.phase = f"measuring {name}, round {round_no} of {rounds}"
            runs.append(Round(name, round_no, await measure(name, server, round_no)))
    return runs


def paired(
    runs: Sequence[Round[T]], top: str, bottom: str, figure: Callable[[T], float]
) -> PairedRatios:
    """`figure` of server `top` against server `bottom`, round by round."""

    def by_round(server: str) -> dict[int, float]:
        return {run.round: figure(run.result) for run in runs if run.server == server}

    return paired_ratios(by_round(top), by_round(bottom))
