"""What the machine and the benchmark's processes are doing, read from /proc (Linux).

Every figure means little without the machine it was measured on, and the
CPU a run took (client, server, everything else) tells how far other work
skewed it.  Readings that /proc cannot give are None, never a guess.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

from .report import BenchError

MEMORY_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")  # of /proc/PID/status, in kB there


def describe() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
    }


def machine_busy_seconds() -> float | None:
    """CPU seconds all the machine's CPUs have been busy since boot, from /proc/stat."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds a process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def tree_cpu_seconds(pid: int) -> float | None:
    """`process_cpu_seconds` of a process plus those of its live children.

    A durable node checkpoints in a child process of its own, whose CPU the
    node's own figure leaves out until the child exits.
    """
    own = process_cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(process_cpu_seconds(child) or 0.0 for child in child_pids(pid))


def child_pids(pid: int) -> list[int]:
    """The live children of `pid`, by the parent field of every /proc/N/stat.

    (/proc/PID/task/TID/children would be quicker, but not every kernel has it.)
    """
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


def resident_memory(pid: int) -> dict[str, int]:
    """The process's resident memory in bytes: VmRSS, its anonymous and file parts, its peak."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        raise BenchError(f"memory reads /proc/{pid}/status (Linux only): {exc}") from None
    found: dict[str, int] = {}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in MEMORY_FIELDS:
            found[name] = int(value.split()[0]) * 1024
    return found
