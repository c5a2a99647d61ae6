"""The command line: `replica serve`, `replica stdio`, `replica cluster up`, `replica status`.

Each subcommand is one `_add_<name>` function that declares its arguments and
the function that runs it.  A cluster file the node cannot use ends the
command with exit code 2 and one line on stderr, never a traceback.  SIGINT
and SIGTERM stop a running node cleanly, with exit code 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import uvloop

from replica import __version__
from replica.cli.config import ClusterConfig, ConfigError, NodeConfig, load_cluster
from replica.cli.logs import LEVELS, configure_logging

if TYPE_CHECKING:
    from replica.durable.storage import Store
    from replica.node.router import Node

log = logging.getLogger("replica.cli.main")

Commands = argparse._SubParsersAction  # what add_subparsers returns

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # a bad command line or cluster file, as argparse itself uses


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_USAGE
    try:
        return int(args.run(args))
    except KeyboardInterrupt:  # Ctrl-C before the event loop took over the signal
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replica",
        description="A replicated, always-writable key-value server.",
    )
    parser.add_argument("--version", action="version", version=f"replica {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", required=True)
    for add in (_add_serve, _add_stdio, _add_cluster, _add_status):
        add(commands)
    return parser


# -- replica serve -------------------------------------------------------------------------


def _add_serve(commands: Commands) -> None:
    serve = commands.add_parser(
        "serve", help="run one node of a cluster file over TCP", description=_SERVE_DESCRIPTION
    )
    _config_argument(serve)
    serve.add_argument("--node", required=True, help="this node's id in the cluster file")
    serve.add_argument(
        "--memory",
        action="store_true",
        help="keep everything in memory, ignoring the node's data_dir",
    )
    serve.add_argument(
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
    serve.add_argument(
        "--watch-fd",
        type=_open_descriptor,
        metavar="FD",
        help="for supervisors: stop cleanly once descriptor FD, the read end of a pipe "
        "whose write end the supervisor holds, reaches end of file (the supervisor died)",
    )
    _log_level_argument(serve)
    serve.set_defaults(run=_run_serve)


_SERVE_DESCRIPTION = (
    "Run node NODE of the cluster file: listen on its host:port, dial every other node."
)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        config = load_cluster(args.config)
        me = config.node(args.node)
    except ConfigError as exc:
        message = str(exc)
        if not message.startswith(str(args.config)):
            message = f"{args.config}: {message}"
        return _config_error(message)
    configure_logging(args.log_level, me.id)
    data_dir = None if args.memory else me.data_dir
    from replica.durable.storage import StorageError, open_store

    try:
        store, actor = open_store(data_dir, me.id, salvage=args.salvage)
    except StorageError as exc:
        return _storage_error(exc)
    return uvloop.run(
        _serve(config, me, store if data_dir is not None else None, actor, args.watch_fd)
    )


async def _serve(
    config: ClusterConfig,
    me: NodeConfig,
    store: Store | None,
    actor: str,
    watch_fd: int | None = None,
) -> int:
    """Recover from `store` (None: a node in memory), then listen, dial peers, and serve.

    Until a stop signal, or end of file on `watch_fd` (a supervisor that died).
    """
    with _stop_on_signals() as stop, _stop_at_end_of(watch_fd, stop):  # from the start
        return await _serve_until(stop, config, me, store, actor)


async def _serve_until(
    stop: asyncio.Event, config: ClusterConfig, me: NodeConfig, store: Store | None, actor: str
) -> int:
    from replica.durable.durability import Durability
    from replica.durable.storage import StorageError
    from replica.node.router import Node
    from replica.transports.tcp import serve_tcp

    node = Node(me.id, config.node_ids, config.node_settings(), actor=actor)
    _collect_less_often()
    if store is not None:
        try:
            _recover(node, store)
            node.durability = Durability(  # starts the log writer
                node.keyspaces,
                store,
                mode=config.durability,
                flush_interval_ms=config.flush_interval_ms,
                commit_timeout_ms=config.commit_timeout_ms,
            )
        except StorageError as exc:
            store.close()
            return _storage_error(exc)
    try:
        server = await serve_tcp(node, me.host, me.port)
    except OSError as exc:
        log.error("cannot listen on %s: %s", me.address, exc.strerror or exc)
        if node.durability is not None:
            await node.durability.close()
        return EXIT_FAILURE
    log.info("%s listening on %s", me.id, me.address)
    resp_server = None
    if me.resp_port is not None:
        from replica.transports.resp import serve_resp

        try:
            resp_server = await serve_resp(node, me.host, me.resp_port)
        except OSError as exc:
            log.error("cannot listen on %s: %s", me.resp_address, exc.strerror or exc)
            await server.close()
            if node.durability is not None:
                await node.durability.close()
            return EXIT_FAILURE
        log.info("%s RESP on %s", me.id, me.resp_address)
    stop_replication = _start_replication(node, config, me)
    try:
        await stop.wait()
    finally:
        await stop_replication()
        if resp_server is not None:
            await resp_server.close()
        await server.close()
        if node.durability is not None:
            await node.durability.close()
    log.info("%s stopped", me.id)
    return EXIT_OK


GC_THRESHOLDS = (50_000, 20, 100)


def _collect_less_often() -> None:
    """Run the cyclic garbage collector far less often than Python's default.

    Every write allocates a handful of container objects and keeps most of
    them as the key's new state, so with the default thresholds (700, 10, 10)
    the collector ran every ~70 writes and rescanned every live state again
    and again: about a third of a write's cost under load.  States hold no
    reference cycles (reference counting frees them), so rarer collections
    cost little memory; a young collection of 50,000 objects takes a few
    milliseconds.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def _recover(node: Node, store: Store) -> None:
    """Load every stored key before the node serves anything.

    Loading makes millions of objects that all stay alive, so the cyclic
    garbage collector would only rescan them again and again (about 40% of the
    load time for a million keys).  It is off while loading, and everything
    alive afterwards is frozen out of future collections (`gc.freeze`), so the
    first collections after start do not rescan it either.  States hold no
    reference cycles: reference counting still frees them when replaced.
    """
    started = time.perf_counter()
    count = 0
    collecting = gc.isenabled()
    gc.disable()
    try:
        count = node.keyspaces.load_many(store.load_all())
    finally:
        if collecting:
            gc.freeze()
            gc.enable()
    elapsed_ms = (time.perf_counter() - started) * 1000
    log.info("loaded %d keys in %.0f ms (actor %s)", count, elapsed_ms, node.keyspaces.actor)


def _start_replication(
    node: Node, config: ClusterConfig, me: NodeConfig
) -> Callable[[], Awaitable[None]]:
    """Dial every peer and start the gossip ticker; returns what stops them."""
    peers = config.peers(me.id)
    if not peers or node.replicator is None:
        return _nothing_to_stop
    from replica.replication.peer_links import PeerLinks, gossip_forever

    links = PeerLinks(node, peers)
    links.start()
    gossip = asyncio.create_task(gossip_forever(node, config.gossip_interval_ms))

    async def stop() -> None:
        gossip.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gossip
        await links.close()

    return stop


async def _nothing_to_stop() -> None:
    return None


# -- replica stdio -------------------------------------------------------------------------


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
        default=1 << 20,
        metavar="N",
        help="longest request line accepted (default: %(default)s)",
    )
    stdio.add_argument(
        "--mvcc-retention-ms",
        type=_non_negative_int,
        default=3_600_000,
        metavar="N",
        help="how far the MVCC GC horizon trails the newest timestamp; 0: off "
        "(default: %(default)s)",
    )
    stdio.add_argument(
        "--max-clock-skew-ms",
        type=_non_negative_int,
        default=60_000,
        metavar="N",
        help="how far past the wall clock a client's timestamp may be; further gets error 22 "
        "(default: %(default)s)",
    )
    stdio.add_argument(
        "--gossip-interval-ms",
        type=_positive_int,
        default=200,
        metavar="N",
        help="how often changes are gossiped to peers (default: %(default)s)",
    )
    stdio.set_defaults(run=_run_stdio)


def _run_stdio(args: argparse.Namespace) -> int:
    from replica.node.router import Node, NodeSettings

    settings = NodeSettings(
        max_line_bytes=args.max_line_bytes,
        mvcc_retention_ms=args.mvcc_retention_ms,
        max_clock_skew_ms=args.max_clock_skew_ms,
    )
    node = Node(settings=settings)
    configure_logging(args.log_level, lambda: node.node_id)
    return uvloop.run(_stdio(node, args.gossip_interval_ms))


async def _stdio(node: Node, gossip_interval_ms: int) -> int:
    from replica.transports.stdio import StdioTransport

    transport = StdioTransport(node, gossip_interval_ms=gossip_interval_ms)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, transport.stop)
    await transport.run()
    return EXIT_OK


# -- replica cluster up --------------------------------------------------------------------


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
    _log_level_argument(up)
    up.set_defaults(run=_run_cluster_up)


def _run_cluster_up(args: argparse.Namespace) -> int:
    try:
        config = load_cluster(args.config)
    except ConfigError as exc:
        return _config_error(str(exc))
    from replica.cli.cluster_up import cluster_up

    return uvloop.run(cluster_up(Path(args.config), config, args.log_level))


# -- replica status ------------------------------------------------------------------------


def _add_status(commands: Commands) -> None:
    status = commands.add_parser(
        "status",
        help="one table of every node's keys, siblings and peers",
        description="Ask every node of the cluster file for its status; "
        "a node that does not answer is shown as down.",
    )
    _config_argument(status)
    status.set_defaults(run=_run_status)


def _run_status(args: argparse.Namespace) -> int:
    try:
        config = load_cluster(args.config)
    except ConfigError as exc:
        return _config_error(str(exc))
    from replica.cli.status_table import cluster_status, format_table

    rows = uvloop.run(cluster_status(config))
    print(format_table(rows))
    return EXIT_OK if all(isinstance(status, dict) for _, status in rows) else EXIT_FAILURE


# -- shared pieces -------------------------------------------------------------------------


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


def _storage_error(exc: Exception) -> int:
    print(f"replica: storage error: {exc}", file=sys.stderr)
    return EXIT_USAGE


def _config_error(message: str) -> int:
    print(f"replica: config error: {message}", file=sys.stderr)
    return EXIT_USAGE


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {value}")
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


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[asyncio.Event]:
    """An event SIGINT and SIGTERM set, for as long as the block runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.contextmanager
def _stop_at_end_of(fd: int | None, stop: asyncio.Event) -> Iterator[None]:
    """Set `stop` once `fd` reaches end of file, for as long as the block runs.

    The supervisor holds the only write end of the pipe `fd` reads; the
    kernel closes it however the supervisor dies, SIGKILL included, so its
    node stops cleanly instead of outliving it and keeping its data dir.
    """
    if fd is None:
        yield
        return
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            if os.read(fd, 4096):
                return  # a supervisor never writes: ignored
        except BlockingIOError:
            return
        except OSError:
            pass
        loop.remove_reader(fd)
        if not stop.is_set():
            log.warning("supervisor gone (end of file on --watch-fd %d): stopping", fd)
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)
    try:
        yield
    finally:
        loop.remove_reader(fd)


def _open_descriptor(text: str) -> int:
    fd = _non_negative_int(text)
    try:
        os.fstat(fd)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"descriptor {fd}: {exc.strerror}") from None
    return fd
