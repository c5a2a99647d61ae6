"""py-spy sampling every node from outside, for as long as the measured phase lasts.

Sampling runs with `--nonblocking`, so the nodes are never paused, but the
samplers still take CPU from the nodes: timings of a profiled run are not the
benchmark's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from .processes import STOP_TIMEOUT, Children
from .report import BenchError
from .session import NodeHandle

# the frames every sample passes through on its way to the work: the entry point and transport
ENTRY_FRAMES = tuple(
    f"(replica/{m}.py)" for m in ("__main__", "cli/main", "transports/tcp", "node/router")
)
LINE_NUMBER = re.compile(r":\d+\)$")  # py-spy frames end "(file.py:123)"


class Profiler:
    def __init__(self, directory: Path, children: Children) -> None:
        self.directory = directory
        self.children = children
        self.samplers: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, nodes: Iterable[NodeHandle]) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(py_spy).exists():
            raise BenchError("--profile needs py-spy (pip install py-spy into the venv)")
        self.directory.mkdir(parents=True, exist_ok=True)
        for node in nodes:
            assert node.process is not None
            argv = [py_spy, "record", "--pid", str(node.process.pid), "--rate", "250"]
            argv += ["--nonblocking", "--format", "raw", "--output", str(self.output(node.id))]
            self.samplers[node.id] = self.children.spawn(
                argv, cwd=self.directory, log=self.directory / f"{node.id}.py-spy.log"
            )

    def output(self, node_id: str) -> Path:
        return self.directory / f"{node_id}.folded"

    async def stop(self) -> None:
        """SIGINT makes py-spy write what it sampled."""
        for sampler in self.samplers.values():
            with contextlib.suppress(ProcessLookupError):
                sampler.send_signal(signal.SIGINT)
        for sampler in self.samplers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(sampler.wait, STOP_TIMEOUT)

    def summary(self, top: int = 8) -> list[str]:
        """Per node: where the samples were (own time), and the replica calls that held them."""
        out = []
        for node_id in self.samplers:
            inclusive, own, total = fold(self.output(node_id))
            out.append(f"  {node_id}: {total} samples, {self.output(node_id)}")
            out.append("    own time:")
            out += _shares(own, total, top)
            calls = {f: n for f, n in inclusive.items() if _below_transport(f)}
            out.append("    inclusive, below the transport:")
            out += _shares(calls, total, top + 4)
        return out


def _below_transport(frame: str) -> bool:
    """A frame of replica's own work, not one of the entry and transport frames above it all."""
    return "replica/" in frame and not frame.endswith(ENTRY_FRAMES)


def _shares(counts: dict[str, int], total: int, top: int) -> list[str]:
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
    return [f"      {100 * n / max(total, 1):5.1f}%  {frame}" for frame, n in ranked]


def fold(path: Path) -> tuple[dict[str, int], dict[str, int], int]:
    """Inclusive and own sample counts per function from py-spy's folded stacks.

    Line numbers are dropped, so a function's samples are counted together
    whichever of its lines they fell on.
    """
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [LINE_NUMBER.sub(")", frame) for frame in stack.split(";")]
            total += count
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + count
            own[frames[-1]] = own.get(frames[-1], 0) + count
    return inclusive, own, total
