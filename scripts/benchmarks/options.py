"""Command-line options that several scenarios share."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from .workload import OPS, parse_mix


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def count_option(
    parser: argparse.ArgumentParser, flag: str, default: int, what: str, metavar: str = "N"
) -> None:
    """An option taking a whole number of at least 1; its help ends with the default."""
    parser.add_argument(
        flag,
        type=at_least(1),
        default=default,
        metavar=metavar,
        help=f"{what} (default: {default})",
    )


def value_bytes_option(parser: argparse.ArgumentParser) -> None:
    count_option(parser, "--value-bytes", 16, "length of each written value")


def run_options(parser: argparse.ArgumentParser, timeout: float) -> None:
    """The whole run's deadline and the JSON switch: every scenario has them."""
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        metavar="S",
        help=f"the whole run's deadline in seconds (default: {timeout:g})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cluster_options() -> argparse.ArgumentParser:
    """A cluster scenario's options (`converge`), as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nodes", type=at_least(2), default=3, help="cluster size (default: 3)")
    count_option(common, "--gossip-interval-ms", 200, "the nodes' gossip_interval_ms", "MS")
    common.add_argument("--keyspace", choices=("mv",), default="mv", help="(default: mv)")
    value_bytes_option(common)
    count_option(common, "--connections", 16, "client connections per written node")
    count_option(common, "--window", 64, "requests in flight per connection")
    common.add_argument(
        "--memory",
        action="store_true",
        help="nodes keep everything in memory (serve --memory) instead of in their data_dir",
    )
    common.add_argument(
        "--profile",
        metavar="DIR",
        help="sample every node with py-spy during the measured phase; folded stacks go "
        "to DIR and a summary is printed (the samplers slow the nodes down)",
    )
    run_options(common, 120.0)
    return common


def single_node_options(parser: argparse.ArgumentParser, timeout: float) -> None:
    """What a one-node scenario shares: value size, deadline, JSON; no cluster options."""
    value_bytes_option(parser)
    run_options(parser, timeout)
    parser.set_defaults(nodes=1, gossip_interval_ms=200, memory=False)


def load_options(parser: argparse.ArgumentParser, seconds: float) -> None:
    """The timed load of `throughput` and `compare`: connections x in flight, mix, keys."""
    count_option(parser, "--connections", 16, "client connections", "C")
    count_option(parser, "--in-flight", 16, "requests in flight per connection", "P")
    parser.add_argument(
        "--seconds",
        type=float,
        default=seconds,
        metavar="D",
        help=f"per measured run (default: {seconds:g})",
    )
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("mv_write"),
        metavar="OP[:W],...",
        help=f"ops with optional weights, of {', '.join(OPS)} (default: mv_write)",
    )
    count_option(parser, "--keys", 100_000, "distinct keys", "KEYS")


def rounds_option(parser: argparse.ArgumentParser, default: int | None, what: str) -> None:
    parser.add_argument("--rounds", type=at_least(1), default=default, metavar="R", help=what)
