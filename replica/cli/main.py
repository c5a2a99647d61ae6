"""The command line: `replica serve`, `stdio`, `cluster up`, `fault`, `status` and `keygen`.

This module declares every subcommand's arguments (one `_add_<name>`
function each) and hands the parsed arguments to the function that runs it:
`serve.py` runs a node, `cluster_up.py` a local cluster, `fault_command.py`
changes the links of a cluster run with `--faults`, `status_table.py` asks a
cluster for its status.  A cluster file the command cannot use ends
it here, with exit code 2 and one line on stderr, never a traceback.
SIGINT and SIGTERM stop a running node cleanly, with exit code 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from replica import __version__
from replica.cli import config, secret_files, serve
from replica.cli.cluster_up import run_cluster_up
from replica.cli.config import CLOCK_OFFSET_ENV, ConfigError
from replica.cli.exit_codes import EXIT_OK, EXIT_USAGE
from replica.cli.fault_command import run_fault
from replica.cli.logs import LEVELS
from replica.cli.status_table import run_status
from replica.replication.quorum import NAMED_SIZES

Commands = argparse._SubParsersAction  # what add_subparsers returns


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    if "clock_offset_ms" in args and args.clock_offset_ms is None:
        try:
            args.clock_offset_ms = _clock_offset(
                os.environ.get(CLOCK_OFFSET_ENV, "0"), "$" + CLOCK_OFFSET_ENV
            )
        except argparse.ArgumentTypeError as exc:
            print(f"replica: {exc}", file=sys.stderr)
            return EXIT_USAGE
    try:
        return int(args.run(args))
    except ConfigError as exc:  # its text names the file and what is wrong
        print(f"replica: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C before the event loop took over the signal
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replica",
        description="A replicated, always-writable key-value server.",
    )
    parser.add_argument("--version", action="version", version=f"replica {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    for add in (_add_serve, _add_stdio, _add_cluster, _add_fault, _add_status, _add_keygen):
        add(commands)
    return parser


def _add_serve(commands: Commands) -> None:
    serve_parser = commands.add_parser(
        "serve",
        help="run one node of a cluster file over TCP",
        description="Run node NODE of the cluster file: listen on its host:port, "
        "dial every other node.",
    )
    _config_argument(serve_parser)
    serve_parser.add_argument("--node", required=True, help="this node's id in the cluster file")
    serve_parser.add_argument(
        "--memory",
        action="store_true",
        help="keep everything in memory, ignoring the node's data_dir",
    )
    serve_parser.add_argument(
        "--salvage",
        action="store_true",
        help="start from what is readable of a damaged data dir instead of refusing it "
        "(never done by default): values that fail their checksum are removed, a copy of "
        "data.mdb kept; a data.mdb LMDB cannot read whole is set aside as "
        "data.mdb.damaged-<unix time> and what it could read is copied into a new one, "
        "the log supplying the rest; damaged log records are cut out. Each is logged as "
        "an error, and the node continues under a new actor. Acknowledged writes in the "
        "damaged parts are lost",
    )
    serve_parser.add_argument(
        "--watch-fd",
        type=_open_descriptor,
        metavar="FD",
        help="for supervisors: stop cleanly once descriptor FD, the read end of a pipe "
        "whose write end the supervisor holds, reaches end of file (the supervisor died)",
    )
    serve_parser.add_argument(
        "--peer-address",
        type=_peer_address,
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="dial peer ID at HOST:PORT instead of its address in the cluster file "
        "(repeatable); meant for `replica cluster up --faults`, which puts a fault proxy "
        "between every two nodes. The node still listens at its own address",
    )
    _clock_offset_argument(serve_parser)
    _log_level_argument(serve_parser)
    serve_parser.set_defaults(run=serve.run_serve)


def _add_stdio(commands: Commands) -> None:
    stdio = commands.add_parser(
        "stdio",
        help="run one node over stdin/stdout (Maelstrom)",
        description="Run one node over stdin/stdout, Maelstrom-compatible. "
        "Messages on stdout, logs on stderr; the node takes its id from init.",
    )
    _log_level_argument(stdio)
    stdio.add_argument(
        "--max-line-bytes",
        type=_positive_int,
        default=config.DEFAULT_MAX_LINE_BYTES,
        metavar="N",
        help="longest request line accepted (default: %(default)s)",
    )
    stdio.add_argument(
        "--mvcc-retention-ms",
        type=_non_negative_int,
        default=config.DEFAULT_MVCC_RETENTION_MS,
        metavar="N",
        help="how far the MVCC GC horizon trails the newest timestamp; 0: off "
        "(default: %(default)s)",
    )
    stdio.add_argument(
        "--max-clock-skew-ms",
        type=_non_negative_int,
        default=config.DEFAULT_MAX_CLOCK_SKEW_MS,
        metavar="N",
        help="how far past the wall clock a client's timestamp may be; further gets error 22 "
        "(default: %(default)s)",
    )
    stdio.add_argument(
        "--gossip-interval-ms",
        type=_positive_int,
        default=config.DEFAULT_GOSSIP_INTERVAL_MS,
        metavar="N",
        help="how often changes are gossiped to peers (default: %(default)s)",
    )
    for flag, default, what in (
        ("--sibling-warn", config.DEFAULT_SIBLING_WARN, "siblings of a key that log a warning"),
        ("--max-siblings", config.DEFAULT_MAX_SIBLINGS, "more refuse a client's write (22)"),
        ("--max-value-bytes", config.DEFAULT_MAX_VALUE_BYTES, "a larger value is refused (12)"),
        ("--request-timeout-ms", config.DEFAULT_REQUEST_TIMEOUT_MS, "a quorum's wait (then 0)"),
    ):
        stdio.add_argument(
            flag,
            type=_positive_int,
            default=default,
            metavar="N",
            help=f"{what} (default: %(default)s)",
        )
    for flag, what in (
        ("--w", "nodes that hold a write before it is answered"),
        ("--r", "nodes whose states a read merges"),
    ):
        stdio.add_argument(
            flag,
            type=_quorum,
            default=1,
            metavar="Q",
            help=f"default {what}: 1 or more, one, quorum or all (default: %(default)s)",
        )
    _clock_offset_argument(stdio)
    stdio.set_defaults(run=serve.run_stdio)


def _add_cluster(commands: Commands) -> None:
    cluster = commands.add_parser("cluster", help="run a whole cluster locally")
    actions = cluster.add_subparsers(dest="action", metavar="action", required=True)
    up = actions.add_parser(
        "up",
        help="every node of the cluster file as child processes",
        description="Start every node of the cluster file as a child process, with one "
        "log stream whose lines name their node; Ctrl-C, SIGTERM or SIGHUP stops them all, "
        "and if it is killed its nodes stop by themselves.",
    )
    _config_argument(up)
    up.add_argument(
        "--faults",
        action="store_true",
        help="run every peer link through a proxy this process controls, so "
        "`replica fault` can cut, partition, delay and heal links while the cluster runs; "
        "clients still reach each node at its own address",
    )
    _log_level_argument(up)
    up.set_defaults(run=run_cluster_up)


def _add_fault(commands: Commands) -> None:
    fault = commands.add_parser(
        "fault",
        help="cut, partition, delay or heal links of a running `cluster up --faults`",
        description="Act on the link proxies of the `replica cluster up --faults` running "
        "for the same cluster file, then print every link that is cut or delayed. "
        "Exit code 1 when none runs, 2 for a node the file does not have.",
    )
    _config_argument(fault)
    actions = fault.add_subparsers(dest="action", metavar="action", required=True)
    partition = _fault_action(
        actions, "partition", "cut exactly the links between groups, heal the others: n1 / n2 n3"
    )
    partition.add_argument("groups", nargs="+", metavar="NODE", help="node ids, groups split by /")
    isolate = _fault_action(actions, "isolate", "cut every link from and to NODE")
    isolate.add_argument("node", metavar="NODE")
    cut = _fault_action(actions, "cut", "cut one direction: nothing FROM sends reaches TO")
    cut.add_argument("source", metavar="FROM")
    cut.add_argument("target", metavar="TO")
    latency = _fault_action(
        actions,
        "latency",
        "delay both directions between two nodes: n1 n2 100ms [jitter 20ms]; 0 removes it",
    )
    latency.add_argument("a", metavar="NODE")
    latency.add_argument("b", metavar="NODE")
    latency.add_argument("delay", metavar="DELAY", help="100ms, 1s, or a bare number of ms")
    latency.add_argument("jitter", nargs="*", metavar="jitter JITTER", help="± up to JITTER")
    _fault_action(actions, "heal", "every link up, every latency gone")
    _fault_action(actions, "show", "change nothing; print what is cut or delayed")
    fault.set_defaults(run=run_fault)


def _fault_action(actions: Commands, name: str, text: str) -> argparse.ArgumentParser:
    """An action of `replica fault`, which takes --config after it as well."""
    action: argparse.ArgumentParser = actions.add_parser(name, help=text, description=text)
    action.add_argument(  # SUPPRESS: a default here would override a --config given before
        "--config", default=argparse.SUPPRESS, metavar="PATH", help="the cluster file"
    )
    return action


def _add_status(commands: Commands) -> None:
    status = commands.add_parser(
        "status",
        help="one table of every node's keys, siblings and peers",
        description="Ask every node of the cluster file for its status; "
        "a node that does not answer is shown as down. While a `cluster up --faults` "
        "runs for the file, the links it has cut or delayed follow the table.",
    )
    _config_argument(status)
    status.set_defaults(run=run_status)


def _add_keygen(commands: Commands) -> None:
    keygen = commands.add_parser(
        "keygen",
        help="write a new random cluster secret (mode 0600)",
        description="Write a new random cluster secret to PATH, readable by its owner only, "
        "for [cluster] secret_file; an existing file is never overwritten.",
    )
    keygen.add_argument("path", metavar="PATH", help="the file to create")
    keygen.set_defaults(run=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    """`replica keygen PATH`: prints the path; exit 2 if it exists or cannot be created."""
    try:
        secret_files.write_secret(args.path)
    except FileExistsError:
        print(f"replica: keygen: {args.path} exists; not overwriting a secret", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"replica: keygen: {args.path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(args.path)
    return EXIT_OK


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="cluster.toml",
        metavar="PATH",
        help="the cluster file (default: %(default)s)",
    )


def _log_level_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", choices=LEVELS, default="info", help="(default: %(default)s)"
    )


MAX_CLOCK_OFFSET_MS = 10 * 365 * 24 * 3_600_000


def _clock_offset_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clock-offset-ms",
        type=_clock_offset,
        metavar="N",
        help="for fault tests: add N ms (may be negative) to every wall clock reading of this "
        f"node's hybrid clock, not the machine's clock (default: ${CLOCK_OFFSET_ENV}, else 0)",
    )


def _clock_offset(text: str, source: str = "--clock-offset-ms") -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{source} must be an integer, not {text!r}") from None
    if abs(value) > MAX_CLOCK_OFFSET_MS:
        raise argparse.ArgumentTypeError(
            f"{source} must be from {-MAX_CLOCK_OFFSET_MS} to {MAX_CLOCK_OFFSET_MS}, not {value}"
        )
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {value}")
    return value


def _quorum(text: str) -> int | str:
    if text in NAMED_SIZES:
        return text
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, one, quorum or all, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _peer_address(text: str) -> tuple[str, str, int]:
    """`ID=HOST:PORT` as (id, host, port); whether ID is a peer is checked against the file."""
    peer, equals, address = text.partition("=")
    host, colon, port_text = address.rpartition(":")
    if not equals or not peer or not colon or not host:
        raise argparse.ArgumentTypeError(f"expected ID=HOST:PORT, not {text!r}")
    port = _int(port_text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be from 1 to 65535, not {port}")
    return peer, host, port


def _open_descriptor(text: str) -> int:
    fd = _non_negative_int(text)
    try:
        os.fstat(fd)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"descriptor {fd}: {exc.strerror}") from None
    return fd
