"""The statistics of a noisy machine: percentiles, and paired ratios of alternating rounds.

This machine's speed drifts by tens of percent within minutes, so two
variants are compared by rounds that alternate (A, B, A, B, ...): round i of
B against round i of A ran moments apart and saw the machine in about the
same state.  The figure to read is the median of those per-round ratios,
which one slow minute cannot move far; the ratio of the two medians is kept
beside it.  Pure functions only: tested on their own.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

DEFAULT_ROUNDS = 10  # the fewest alternating rounds a comparison runs unless told otherwise


def percentile(ordered: Sequence[float], q: float) -> float:
    """The value at rank `q` (0 to 1) of `ordered`, which must be sorted; nan if empty."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ratio(top: float, bottom: float) -> float:
    """`top / bottom`, with a bottom of zero read as a very small number, never an error."""
    return top / max(bottom, 1e-9)


@dataclass(frozen=True)
class PairedRatios:
    """`top / bottom` over rounds that alternated: per round, and summed up.

    `per_round[i]` is round `rounds[i]` of top against the same round of bottom.
    """

    rounds: list[int]
    per_round: list[float]
    median: float  # of the per-round ratios: the figure to read
    of_medians: float  # median of top / median of bottom
    low: float
    high: float

    def figures(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """The median, then every round's ratio: `0.912 (rounds 0.871 0.934 ...)`."""
        rounds = " ".join(f"{x:.3f}" for x in self.per_round)
        return f"{self.median:.3f} (median of rounds; rounds {rounds})"


def paired_ratios(top: Mapping[int, float], bottom: Mapping[int, float]) -> PairedRatios:
    """Ratios of the rounds both sides ran, by round number; a ValueError if there are none."""
    rounds = sorted(set(top) & set(bottom))
    if not rounds:
        raise ValueError("no round ran on both sides")
    per_round = [ratio(top[i], bottom[i]) for i in rounds]
    return PairedRatios(
        rounds=rounds,
        per_round=per_round,
        median=statistics.median(per_round),
        of_medians=ratio(statistics.median(top.values()), statistics.median(bottom.values())),
        low=min(per_round),
        high=max(per_round),
    )


def expected_distinct(draws: int, keyspace: int) -> float:
    """How many distinct keys `draws` uniform draws from `keyspace` hit, on average."""
    return keyspace * (1 - (1 - 1 / keyspace) ** draws)


def least_plausible(trials: int, p: float, deviations: float = 4.0) -> float:
    """The fewest hits of `trials` draws, each a hit with chance `p`, that chance explains.

    The binomial mean less `deviations` standard deviations: fewer than that
    is a fault, not bad luck (a fixed share of the mean would fail small
    samples by chance alone).
    """
    return trials * p - deviations * math.sqrt(trials * p * (1 - p))
