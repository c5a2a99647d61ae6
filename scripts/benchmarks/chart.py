"""`throughput --depths ... --chart FILE.png`: ops/s and p99 against the depth, as a PNG.

matplotlib is an optional extra (`plot`), imported only when a chart is drawn.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .machine import describe
from .report import BenchError

PLOT_INSTALL = ".venv/bin/pip install -e '.[plot]'"  # the optional extra that has matplotlib
SERVER_LABELS = {
    "floor": "floor (uvloop + orjson)",
    "durable": "node, durable",
    "memory": "node, in memory",
}


def draw_chart(path: Path, summary: list[dict[str, Any]], title: str) -> None:
    """Ops/s (median of rounds) and p99 against the depth, one line per server."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, (rate, p99) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    for server in dict.fromkeys(e["server"] for e in summary):
        points = sorted(
            (e["depth"], e["median_ops_per_s"], e["p99_ms"])
            for e in summary
            if e["server"] == server
        )
        depths = [p[0] for p in points]
        label = SERVER_LABELS.get(server, server)
        rate.plot(depths, [p[1] for p in points], marker="o", label=label)
        p99.plot(depths, [p[2] for p in points], marker="o", label=label)
    for axes, ylabel in ((rate, "ops/s (median of rounds)"), (p99, "p99 latency, ms")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(sorted({e["depth"] for e in summary}))
        axes.xaxis.set_major_formatter(ticker.ScalarFormatter())
        axes.set_xlabel("requests in flight per connection (pipeline depth)")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.grid(True, alpha=0.3)
        axes.legend()
    rate.yaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
    m = describe()
    figure.suptitle(
        f"{title}\n{m['nproc']} CPUs ({m['cpu_model']}), {m['implementation']} {m['python']}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}, load {m['loadavg_1m']}",
        fontsize=9,
    )
    try:
        figure.savefig(path, dpi=120)
    except OSError as exc:
        raise BenchError(f"cannot write the chart to {path}: {exc}") from None
    finally:
        plt.close(figure)
