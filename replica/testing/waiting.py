"""Waiting for a cluster to reach a state: polled, with a deadline, never a fixed sleep.

Contract: `eventually(probe, predicate)` polls `probe` until `predicate`
accepts what it returned and returns that; past its deadline it raises
`AssertionError` showing the last thing it saw, because "timed out" alone
does not say what went wrong.  `converged(cluster)` waits until every node's
`status` shows every peer connected with nothing pending, all nodes report
the same digest (anti-entropy root hash) and number of keys of each type,
and, given reads, answer them alike.
"""

from __future__ import annotations

import asyncio
import pprint
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from replica.testing.client import Body, without_ids

CONVERGE_TIMEOUT = 15.0
POLL_INTERVAL = 0.05

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]],
    predicate: Callable[[T], bool],
    what: str = "the condition",
    timeout: float = CONVERGE_TIMEOUT,
) -> T:
    """Poll `probe` until `predicate` accepts what it saw; fail showing the last observation."""
    deadline = time.monotonic() + timeout
    while True:
        seen = await probe()
        if predicate(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{what}: not within {timeout}s; last observed:\n{pprint.pformat(seen)}"
            )
        await asyncio.sleep(POLL_INTERVAL)


class Polled(Protocol):
    """What `converged` needs of a cluster: every node's status and answers to a request."""

    async def statuses(self) -> dict[str, Body]: ...

    async def request_each(self, body: Body) -> dict[str, Body]: ...


def quiet(statuses: dict[str, Body]) -> bool:
    """Every node connected to every peer, with no change pending for any of them."""
    return all(
        peer["connected"] and peer["pending"] == 0
        for status in statuses.values()
        for peer in status["peers"]
    )


def linked(statuses: dict[str, Body]) -> bool:
    """Every node connected to every peer."""
    return all(peer["connected"] for status in statuses.values() for peer in status["peers"])


def same_digests(statuses: dict[str, Body]) -> bool:
    """Every node reports the same anti-entropy root for each keyspace."""
    return _all_equal(status.get("digests") for status in statuses.values())


def _all_equal(views: Iterable[Any]) -> bool:
    first, *rest = list(views)
    return all(view == first for view in rest)


async def converged(
    cluster: Polled, reads: Iterable[Body] = (), timeout: float = CONVERGE_TIMEOUT
) -> dict[str, Any]:
    """Until the nodes agree: nothing pending, equal digests and key counts, equal `reads` answers.

    Returns the last statuses and answers, by node.
    """
    requests = list(reads)

    async def observe() -> dict[str, Any]:
        statuses = await cluster.statuses()
        answers = [await cluster.request_each(body) for body in requests]
        return {
            "statuses": statuses,
            "keys": {node: status["keys"] for node, status in statuses.items()},
            "answers": [{n: without_ids(a) for n, a in each.items()} for each in answers],
        }

    def agreed(seen: dict[str, Any]) -> bool:
        return (
            quiet(seen["statuses"])
            and same_digests(seen["statuses"])
            and _all_equal(seen["keys"].values())
            and all(_all_equal(each.values()) for each in seen["answers"])
        )

    return await eventually(observe, agreed, "the nodes converge", timeout)
