"""Running one node: `replica serve` (TCP, from a cluster file) and `replica stdio`.

`serve` opens the node's store, recovers every key from it, starts the log
writer, listens (JSON lines, and RESP when the node has a `resp_port`), dials
every peer and gossips until SIGINT or SIGTERM, or until a supervisor that
passed `--watch-fd` dies; then it stops all of that in reverse order and
exits 0.  A data dir it cannot use ends it with exit code 2 and one line,
and so does a secret or password file it cannot use, or a non-loopback host with neither
a secret nor `insecure = true` (protected mode).  With `[tls]` the contexts
are built once before anything starts (a file it cannot use: exit 2), both
ports serve TLS only and peers are dialled with the node's certificate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import uvloop

from replica import build
from replica.cli.config import ClusterConfig, ConfigError, NodeConfig, load_node
from replica.cli.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from replica.cli.logs import configure_logging

if TYPE_CHECKING:
    from replica.durable.incarnation import Incarnation
    from replica.durable.store import Store
    from replica.node.router import Node, NodeSettings
    from replica.transports.tls import NodeContexts

log = logging.getLogger("replica.cli.serve")

GC_THRESHOLDS = (50_000, 20, 100)
DROP_MERGES_ENV = "REPLICA_TEST_DROP_MERGES_FROM"
"""A peer id: this node then loses that peer's writes, on purpose (`drop_merges_from`)."""


def run_serve(args: argparse.Namespace) -> int:
    """`replica serve`: ConfigError for a cluster file it cannot use."""
    config, me = load_node(args.config, args.node)
    secret = config.secret()
    password = config.password()
    refusal = config.protected_mode_refusal(me, secret)
    if refusal is not None:
        raise ConfigError(f"{args.config}: {refusal}")
    tls = _tls_contexts(args.config, config, me)
    try:
        peers = peer_addresses(config, me, args.peer_address)
    except ValueError as exc:
        print(f"replica: --peer-address: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level, me.id)
    if config.insecure:
        log.warning(
            "[cluster] insecure = true: %s serves %s%s",
            me.id,
            me.address,
            " with a cluster secret or TLS"
            if secret is not None or tls is not None
            else ", and any connection that says "
            "peer_hello may send it peer messages (no secret_file, no TLS)",
        )
    data_dir = None if args.memory else me.data_dir
    from replica.durable.errors import StorageError
    from replica.durable.store import open_store

    try:
        store, incarnation = open_store(data_dir, me.id, salvage=args.salvage)
    except StorageError as exc:
        return _storage_error(exc)
    offset = args.clock_offset_ms
    settings = config.node_settings(offset, secret, password)
    stored = store if data_dir is not None else None
    return uvloop.run(_serve(config, me, peers, stored, incarnation, args.watch_fd, settings, tls))


def _tls_contexts(path: str, config: ClusterConfig, me: NodeConfig) -> NodeContexts | None:
    """The node's TLS contexts, None without `[tls]`; ConfigError naming a file it cannot use."""
    files = config.tls_files(me)
    if files is None:
        return None
    from replica.transports.tls import node_contexts

    try:
        return node_contexts(files)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def peer_addresses(
    config: ClusterConfig, me: NodeConfig, overrides: Iterable[tuple[str, str, int]]
) -> dict[str, tuple[str, int]]:
    """Where `me` dials each peer: the file's address unless `overrides` names another.

    `cluster up --faults` passes one override per peer, the port of the proxy
    it runs for that link, so the file stays the one every node and client
    reads.  ValueError for an id that is not a peer or is given twice.
    """
    peers = config.peers(me.id)
    given: set[str] = set()
    for peer, host, port in overrides:
        if peer == me.id:
            raise ValueError(f"{peer!r} is this node, not a peer")
        if peer not in peers:
            raise ValueError(f"unknown peer {peer!r} (peers: {', '.join(peers) or 'none'})")
        if peer in given:
            raise ValueError(f"peer {peer!r} given twice")
        given.add(peer)
        peers[peer] = (host, port)
    return peers


STDIO_SETTINGS = (
    "max_line_bytes",
    "mvcc_retention_ms",
    "max_clock_skew_ms",
    "clock_offset_ms",
    "sibling_warn",
    "max_siblings",
    "max_value_bytes",
    "w",
    "r",
    "request_timeout_ms",
)
"""The `NodeSettings` fields `replica stdio` takes as flags of the same names."""


def run_stdio(args: argparse.Namespace) -> int:
    """`replica stdio`: a node in memory that takes its identity from `init`."""
    from replica.node.router import Node, NodeSettings

    node = Node(settings=NodeSettings(**{name: getattr(args, name) for name in STDIO_SETTINGS}))
    configure_logging(args.log_level, lambda: node.node_id)
    return uvloop.run(_stdio(node, args.gossip_interval_ms))


async def _serve(
    config: ClusterConfig,
    me: NodeConfig,
    peers: dict[str, tuple[str, int]],
    store: Store | None,
    incarnation: Incarnation,
    watch_fd: int | None = None,
    settings: NodeSettings | None = None,
    tls: NodeContexts | None = None,
) -> int:
    """Recover from `store` (None: a node in memory), then listen, dial `peers`, and serve.

    Until a stop signal, or end of file on `watch_fd` (a supervisor that died).
    """
    with _stop_on_signals() as stop, _stop_at_end_of(watch_fd, stop):  # from the start
        settings = settings or config.node_settings()
        return await _serve_until(stop, config, me, peers, store, incarnation, settings, tls)


async def _serve_until(
    stop: asyncio.Event,
    config: ClusterConfig,
    me: NodeConfig,
    peers: dict[str, tuple[str, int]],
    store: Store | None,
    incarnation: Incarnation,
    settings: NodeSettings,
    tls: NodeContexts | None = None,
) -> int:
    from replica.durable.durability import Durability
    from replica.durable.errors import StorageError
    from replica.node.router import Node
    from replica.transports.tcp import serve_tcp

    lost = os.environ.get(DROP_MERGES_ENV) or None
    if lost is not None:
        settings = dataclasses.replace(settings, drop_merges_from=lost)
        log.warning(
            "%s=%s: %s DROPS every write of %s it is sent, ON PURPOSE, to test history checkers;"
            " never run this outside a test",
            DROP_MERGES_ENV,
            lost,
            me.id,
            lost,
        )
    node = Node(me.id, config.node_ids, settings, actor=incarnation.actor)
    node.keyspaces.dot_floor = incarnation.dot_floor
    _collect_less_often()
    if store is not None:
        try:
            recover(node, store)
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
        server = await serve_tcp(node, me.host, me.port, None if tls is None else tls.server)
    except OSError as exc:
        log.error("cannot listen on %s: %s", me.address, exc.strerror or exc)
        if node.durability is not None:
            await node.durability.close()
        return EXIT_FAILURE
    log.info(
        "%s listening on %s%s, the %s build",
        me.id,
        me.address,
        "" if tls is None else " (TLS)",
        build.describe(),
    )
    resp_server = None
    if me.resp_port is not None:
        from replica.transports.resp import RespConnection
        from replica.transports.tcp import TcpServer

        try:
            resp_server = TcpServer(node, RespConnection, None if tls is None else tls.server)
            await resp_server.start(me.host, me.resp_port)
        except OSError as exc:
            log.error("cannot listen on %s: %s", me.resp_address, exc.strerror or exc)
            await server.close()
            if node.durability is not None:
                await node.durability.close()
            return EXIT_FAILURE
        log.info("%s RESP on %s", me.id, me.resp_address)
    stop_replication = _start_replication(node, config, peers, tls)
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


def _collect_less_often() -> None:
    """Run the cyclic garbage collector far less often than Python's default.

    Every write allocates a handful of container objects and keeps most of
    them as the key's new state, so with the default thresholds (700, 10, 10)
    the collector runs every ~70 writes and rescans every live state again
    and again.  States hold no reference cycles (reference counting frees
    them), so rarer collections cost little memory.
    """
    gc.set_threshold(*GC_THRESHOLDS)


def recover(node: Node, store: Store) -> None:
    """Load every stored key into `node` before it serves anything.

    Loading makes millions of objects that all stay alive, so the cyclic
    garbage collector would only rescan them again and again.  It is off
    while loading, and everything alive afterwards is frozen out of future
    collections (`gc.freeze`), so the first collections after start do not
    rescan it either.  States hold no reference cycles: reference counting
    still frees them when replaced.
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
    node: Node,
    config: ClusterConfig,
    peers: dict[str, tuple[str, int]],
    tls: NodeContexts | None = None,
) -> Callable[[], Awaitable[None]]:
    """Dial every peer and start the gossip ticker; returns what stops them."""
    replicator = node.replicator
    if not peers or replicator is None:
        return _nothing_to_stop
    from replica.replication.peer_links import PeerLinks, gossip_forever

    links = PeerLinks(
        replicator,
        node.handle_line,
        peers,
        node.node_ids,
        secret=node.settings.secret,
        tls=None if tls is None else tls.peer,
    )
    links.start()
    gossip = asyncio.create_task(gossip_forever(replicator, config.gossip_interval_ms))

    async def stop() -> None:
        gossip.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await gossip
        await links.close()

    return stop


async def _nothing_to_stop() -> None:
    return None


async def _stdio(node: Node, gossip_interval_ms: int) -> int:
    from replica.transports.stdio import StdioTransport

    transport = StdioTransport(node, gossip_interval_ms=gossip_interval_ms)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, transport.stop)
    await transport.run()
    return EXIT_OK


def _storage_error(exc: Exception) -> int:
    print(f"replica: storage error: {exc}", file=sys.stderr)
    return EXIT_USAGE


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
