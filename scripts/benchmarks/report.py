"""What a run ends with: a `Report` of figures and targets, or a `BenchError`.

The exit status says which: 0 every target met, 1 a target missed, 3 the run
failed (it could not measure, or what it saw was wrong).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

EXIT_PASS, EXIT_MISS, EXIT_FAILED = 0, 1, 3

Body = dict[str, Any]


class BenchError(Exception):
    """The run could not measure what it set out to: a node failed, a reply was wrong."""


@dataclass
class Target:
    name: str
    measured: float
    limit: float
    unit: str
    at_least: bool = False  # the limit is a floor (a ratio to reach), not a ceiling

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.at_least else self.measured <= self.limit


@dataclass
class Report:
    """What a scenario measured: JSON-ready figures, text lines, targets."""

    command: str
    params: dict[str, Any]
    figures: dict[str, Any]
    lines: list[str]
    targets: list[Target]
    machine: dict[str, Any] = field(default_factory=dict)  # taken before the run started
    failure: str = ""  # set when the run measured, but what it saw makes it a failed run

    @property
    def exit_status(self) -> int:
        if self.failure:
            return EXIT_FAILED
        return EXIT_PASS if all(t.passed for t in self.targets) else EXIT_MISS

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "command": self.command,
                "machine": self.machine,
                "params": self.params,
                "figures": self.figures,
                "failure": self.failure or None,
                "targets": [
                    {
                        "name": t.name,
                        "measured": t.measured,
                        "limit": t.limit,
                        "unit": t.unit,
                        "at_least": t.at_least,
                        "pass": t.passed,
                    }
                    for t in self.targets
                ],
            },
            option=orjson.OPT_INDENT_2,
        )

    def to_text(self) -> str:
        m = self.machine
        out = [
            f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['implementation']} "
            f"{m['python']}, {m['platform']}, load {m['loadavg_1m']}",
            *self.lines,
        ]
        if self.targets:
            out += ["", f"{'target':<46}{'measured':>10}{'limit':>10}  result"]
        for t in self.targets:
            result = "PASS" if t.passed else "MISS"
            unit = f"{t.unit}, at least" if t.at_least else t.unit
            out.append(f"{t.name:<46}{t.measured:>10.2f}{t.limit:>10.2f}  {result}  ({unit})")
        if self.failure:
            out.append(f"FAILED: {self.failure}")
        return "\n".join(out)


def row(label: str, value: str, note: str = "") -> str:
    """One aligned line of a report: a label, a value, a note."""
    return f"  {label:<44}{value:>10}  {note}".rstrip()


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def mib_text(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"
