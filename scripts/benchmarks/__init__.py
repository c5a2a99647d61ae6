"""The benchmark's parts: real `replica serve` processes on loopback, measured from outside.

`scripts/bench.py` is the entry point.  Each scenario is a module of its own
(`converge`, `throughput`, `restart`, `memory`, `resp`, `compare`) with an
`add_parser(commands, common)` that declares its options and a
`run(args, session)` coroutine that returns a `Report`; `cli` lists them.
What they share: `processes` (children that always stop), `session` (nodes
behind proxies that cut links, both from the testing kit `replica.testing`),
`clients` and `load` (requests in flight), `workload` (keys, values, request
mixes), `rounds` and `stats` (alternating rounds and their paired ratios),
`machine` (/proc readings), `report`.
"""
