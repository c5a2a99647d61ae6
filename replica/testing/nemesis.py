"""A random nemesis: partition shapes (and, if asked, slow links) on a schedule, then healed.

Contract: the schedule is a pure function of (seed, nodes, shapes, interval,
duration, latency): a fault for `interval` seconds, every link healed for
`interval`, again until `duration`, ending healed.  The seed defaults to a
fresh random one and is printed when the nemesis starts, so a failing run
replays with `seed=`.  `async with Nemesis(cluster) as nemesis:` runs the
schedule in the background while the body runs; on exit, whatever the body
raised, the schedule stops and every cut, latency and cap is cleared.
`await nemesis.run()` runs it to the end instead.  `nemesis.log` lists what
was done and when, for a failure message.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from replica.testing.shapes import Link, describe, shape_named

if TYPE_CHECKING:
    from replica.testing.cluster import ProxiedCluster

DEFAULT_SHAPES = ("halves", "random_node", "majorities_ring", "bridge")
SLOW = "slow"
"""The step that delays every link by the nemesis' latency (± half of it) instead of cutting."""


@dataclass(frozen=True)
class Step:
    """At `at` seconds from the start: cut exactly `links` (named `fault`), or heal (`fault` None).

    A `slow` step cuts nothing and delays every link by `latency_ms` ± half of it.
    """

    at: float
    fault: str | None
    links: frozenset[Link] = frozenset()
    latency_ms: float = 0.0

    @property
    def action(self) -> str:
        if self.fault is None:
            return "heal"
        if self.fault == SLOW:
            return f"{SLOW}: every link {self.latency_ms:g} ms ± {self.latency_ms / 2:g}"
        return f"{self.fault}: cut {describe(self.links)}"

    def __str__(self) -> str:
        return f"{self.at:.2f}s {self.action}"


def plan(
    seed: int,
    nodes: Sequence[str],
    shapes: Sequence[str] = DEFAULT_SHAPES,
    interval: float = 1.0,
    duration: float = 10.0,
    latency_ms: float | None = None,
) -> list[Step]:
    """The steps of a nemesis: fault, heal, fault, heal, ... every `interval` up to `duration`."""
    if interval <= 0 or duration < 0:
        raise ValueError(f"interval {interval} must be > 0 and duration {duration} >= 0")
    functions = {name: shape_named(name) for name in shapes}
    faults = [*functions, *([SLOW] if latency_ms else [])]
    if not faults:
        raise ValueError("a nemesis needs at least one shape or a latency")
    rng = random.Random(seed)
    ordered = sorted(nodes)
    steps = []
    rounds = 0
    while (start := 2 * rounds * interval) < duration:
        fault = rng.choice(faults)
        if fault == SLOW:
            assert latency_ms is not None
            steps.append(Step(start, SLOW, latency_ms=latency_ms))
        else:
            steps.append(Step(start, fault, frozenset(functions[fault](ordered, rng))))
        steps.append(Step((2 * rounds + 1) * interval, None))
        rounds += 1
    return steps


class Nemesis:
    """A seeded random schedule of faults over a running `ProxiedCluster`."""

    def __init__(
        self,
        cluster: ProxiedCluster,
        shapes: Sequence[str] = DEFAULT_SHAPES,
        interval: float = 1.0,
        duration: float = 10.0,
        seed: int | None = None,
        latency_ms: float | None = None,
    ) -> None:
        """`latency_ms` adds a `slow` step to the faults drawn from: every link that late."""
        self.cluster = cluster
        self.shapes = tuple(shapes)
        self.interval = interval
        self.duration = duration
        self.seed = seed if seed is not None else random.randrange(1 << 32)
        self.latency_ms = latency_ms
        self.log: list[str] = []
        self._steps = self.schedule()  # a bad shape name fails here, not in the background
        self._task: asyncio.Task[None] | None = None

    def schedule(self) -> list[Step]:
        """Every step this nemesis takes, computed from its seed and settings alone."""
        return plan(
            self.seed,
            self.cluster.node_ids,
            self.shapes,
            self.interval,
            self.duration,
            self.latency_ms,
        )

    async def run(self) -> None:
        """Take every step at its time, then heal everything."""
        try:
            await self._take_steps()
        finally:
            await self._heal_everything()

    async def _take_steps(self) -> None:
        print(f"nemesis seed {self.seed}: replay with seed={self.seed}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        partitioner = self.cluster.partitioner
        for step in self._steps:
            await asyncio.sleep(max(0.0, started + step.at - loop.time()))
            if step.fault is None:
                await partitioner.heal_all()
                await partitioner.clear()
            elif step.fault == SLOW:
                await partitioner.set_latency(
                    partitioner.proxies, step.latency_ms, step.latency_ms / 2
                )
            else:
                await partitioner.cut_exactly(step.links)
            self.log.append(f"{loop.time() - started:.2f}s {step.action}")

    async def _heal_everything(self) -> None:
        await self.cluster.partitioner.heal_all()
        await self.cluster.partitioner.clear()

    async def __aenter__(self) -> Nemesis:
        self._task = asyncio.create_task(self._take_steps())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        assert task is not None
        task.cancel()
        await asyncio.wait([task])
        await self._heal_everything()
        failure = None if task.cancelled() else task.exception()
        if failure is not None and exc is None:
            raise failure  # the schedule's own failure, when the body has none to report

    def text(self) -> str:
        """The seed and what was done, for a failure message."""
        return "\n".join([f"nemesis seed {self.seed}", *self.log])
