#!/usr/bin/env python3
"""The project's benchmark: real node processes on loopback, measured from outside.

    .venv/bin/python scripts/bench.py converge [--keys 10000] [--nodes 3]
        [--gossip-interval-ms 200] [--keyspace mv] [--value-bytes 16] [--json]
        [--memory] [--connections 16] [--window 64] [--timeout 120] [--profile DIR]
    .venv/bin/python scripts/bench.py throughput [--connections 16] [--in-flight 16]
        [--seconds 5] [--mix mv_write[:W],mv_read[:W],...] [--durable|--memory|--both]
        [--floor] [--rounds R] [--depths 1,4,16,64] [--chart FILE.png]
        [--keys 100000] [--value-bytes 16] [--json]
    .venv/bin/python scripts/bench.py restart [--keys 1000000] [--value-bytes 16]
        [--connections 8] [--window 64] [--sample 1000] [--json]
    .venv/bin/python scripts/bench.py memory [--keys 1000000] [--value-bytes 16]
        [--connections 8] [--window 64] [--sample 1000] [--memory] [--json]
    .venv/bin/python scripts/bench.py resp [--requests 200000] [--clients 16]
        [--pipeline 16] [--rounds 10] [--memory] [--json]
    .venv/bin/python scripts/bench.py compare [--a-label NAME] [--a-src DIR]
        [--a-env NAME=VALUE] [--a-serve='ARGS'] [--b-label ...] [--b-src ...] ...
        [--mix ...] [--connections 16] [--in-flight 16] [--seconds 3] [--rounds 10]
        [--keys 100000] [--value-bytes 16] [--memory] [--json]
    .venv/bin/python scripts/bench.py tls [--connections 16] [--in-flight 16]
        [--seconds 3] [--rounds 10] [--handshakes 200] [--mix ...] [--memory] [--json]

Run it from any directory, with the project's Python (it needs replica's
dependencies); it imports its parts from the `benchmarks` package beside it.
Each scenario's module docstring says what it measures and its targets.
Comparisons (`throughput --both` and `--floor`, `resp`, `compare`, `tls`) run at
least 10 alternating rounds by default and read the median of the per-round
ratios, since this machine's speed drifts by tens of percent within minutes.

Exit status: 0 every target met, 1 a target missed, 3 the run failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # run by path, sys.path[0] is already here; by runpy or import, not
    sys.path.insert(0, HERE)

try:
    import hiredis  # noqa: F401
    import orjson  # noqa: F401
    import uvloop  # noqa: F401
except ImportError as exc:
    print(
        f"bench.py needs replica's environment: run it with .venv/bin/python ({exc})",
        file=sys.stderr,
    )
    sys.exit(3)  # the run failed: it could not even start

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
