"""A cluster of real node processes whose every directed peer link runs through a fault proxy.

Contract: `cluster(n=3, ...)` (or `proxied_cluster(ids, ...)`) starts the
nodes in a temporary directory, durable by default (`memory=True` for none),
each reading its own cluster file that names every peer at the port of the
proxy P(self→peer), so faults are made between the nodes and never inside
one; clients always reach a node at its real port.  On exit, whatever the
body raised, every client is closed, every node stopped, every log writer and
checkpointer they spawned gone, every proxy closed and the directory removed;
the nodes' logs are printed, which pytest shows for a failed test.

With `secret=True` every node proves the same cluster secret, written with
mode 0600 to `secret` in the directory (`ProxiedCluster.secret_file`);
`node_settings={"n3": {"secret_file": path}}` gives one node another.

With `tls=True` both ports of every node serve TLS only and peers use mutual
TLS: a CA and one certificate per node naming its id are minted into the
directory (`replica.testing.certificates`); `client(node)` then speaks TLS,
`tls_context()` is a client's context (presenting a node's certificate with
`as_node=`), and `tls_ca_file` is what redis-py's `ssl_ca_certs` takes.
`foreign_ca=["n3"]` gives the nodes named certificates from another CA.

Faults: `partition(groups)` (and `partitioned(groups)`, healing on exit),
`cut(a, b)` (one direction), `isolate(node)`, `shape(name)` (a named shape of
`replica.testing.shapes`), `heal()` (cuts only); `latency(a, b, ms)`,
`bandwidth(a, b, bytes_per_second)`, `reset_connections()` and
`clear_link_faults()`; `kill(node)` (-9), `pause(node)` / `resume(node)`
(SIGSTOP / SIGCONT), `restart(node)` and `wipe_and_restart(node)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from replica.cli.config import CLOCK_OFFSET_ENV
from replica.cli.secret_files import write_secret
from replica.testing import certificates
from replica.testing.client import Body, JsonClient, without_ids
from replica.testing.cluster_file import Setting, add_tls, write_cluster_view
from replica.testing.ports import LOOPBACK, free_listen_ports
from replica.testing.process import NodeProcess
from replica.testing.proxy import Link, LinkProxy, Partitioner
from replica.testing.shapes import Cut, ShapeFunction, shape_named
from replica.testing.waiting import CONVERGE_TIMEOUT, converged, eventually, linked, quiet

DEFAULT_GOSSIP_INTERVAL_MS = 50  # fast enough that a scenario converges in a blink
SECRET_FILE = "secret"  # beside the cluster files, which name it relative to themselves
PASSWORD_FILE = "password"


class ProxiedCluster:
    """Running nodes whose every directed link X→Y passes through its own `LinkProxy`.

    Node X reads its own cluster file, `X.toml`, which lists X at its real
    port and every other node Y at the port of the proxy P(X→Y).  Clients
    talk to the real ports, so cutting links never cuts a client off.
    """

    def __init__(
        self,
        directory: Path,
        node_ids: list[str],
        ports: dict[str, int],
        proxies: dict[Link, LinkProxy],
        cluster: Mapping[str, Setting],
        *,
        memory: bool = False,
        node_settings: Mapping[str, Mapping[str, Setting]] | None = None,
        node_env: Mapping[str, Mapping[str, str]] | None = None,
        resp_ports: Mapping[str, int] | None = None,
        tls: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """`node_settings` and `node_env` give single nodes their own settings or environment.

        `tls` is each node's `[tls]` table, files relative to `directory`.
        """
        self.directory = directory
        self.node_ids = node_ids
        self.ports = ports
        self.resp_ports = dict(resp_ports or {})
        self.partitioner = Partitioner(proxies)
        self.nodes: dict[str, NodeProcess] = {}
        self._clients: dict[str, JsonClient] = {}
        self.tls = dict(tls or {})
        self.password: str | None = None
        """The client password of a `password=True` cluster: the kit's clients send it."""
        for node_id in node_ids:
            view = [
                (other, ports[other] if other == node_id else proxies[node_id, other].listen_port)
                for other in node_ids
            ]
            settings = {**cluster, **(node_settings or {}).get(node_id, {})}
            resp = {node_id: self.resp_ports[node_id]} if node_id in self.resp_ports else None
            config = write_cluster_view(directory / f"{node_id}.toml", view, resp, **settings)
            if node_id in self.tls:
                add_tls(config, self.tls[node_id])
            node = self.nodes[node_id] = NodeProcess(
                config,
                node_id,
                LOOPBACK,
                ports[node_id],
                memory=memory,
                env=(node_env or {}).get(node_id),
                resp_port=self.resp_ports.get(node_id),
            )
            if node_id in self.tls:
                node.tls = self.tls_context(trusting=node_id)

    @property
    def tls_ca_file(self) -> Path:
        """The CA every node of a `tls=True` cluster trusts (but those of `foreign_ca`)."""
        return self.directory / certificates.CA_FILE

    def tls_files(self, node_id: str) -> tuple[Path, Path]:
        """The certificate and key node `node_id` serves and dials with."""
        table = self.tls[node_id]
        return self.directory / table["cert_file"], self.directory / table["key_file"]

    def tls_context(
        self, as_node: str | None = None, trusting: str | None = None
    ) -> ssl.SSLContext:
        """A client's context trusting the cluster's CA; with `as_node`, presenting its certificate.

        The node dialled is verified by its id: pass it as `server_hostname`.
        `trusting` trusts that node's CA instead (one of `foreign_ca`).
        """
        if not self.tls:
            raise ValueError("the cluster does not serve TLS: start it with tls=True")
        authority = self.tls_ca_file if trusting is None else self.tls[trusting]["ca_file"]
        context = ssl.create_default_context(cafile=str(self.directory / authority))
        if as_node is not None:  # the default context checks the name dialled, too
            cert, key = self.tls_files(as_node)
            context.load_cert_chain(str(cert), str(key))
        return context

    @property
    def secret_file(self) -> Path:
        """Where a cluster started with `secret=True` keeps its secret."""
        return self.directory / SECRET_FILE

    @property
    def proxies(self) -> dict[Link, LinkProxy]:
        return self.partitioner.proxies

    async def start(self) -> None:
        for proxy in self.proxies.values():
            await proxy.start()
        for node in self.nodes.values():
            node.start()
        for node in self.nodes.values():
            await self._ready(node.node_id)

    async def _ready(self, node_id: str) -> None:
        node = self.nodes[node_id]
        await node.ready()
        if node.resp_port is not None:
            await node.ready(port=node.resp_port)

    # -- faults ----------------------------------------------------------------------------

    async def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut exactly the links between different groups; heal every other link."""
        await self.partitioner.partition([set(g) for g in groups])

    @contextlib.asynccontextmanager
    async def partitioned(self, groups: Iterable[Iterable[str]]) -> AsyncIterator[None]:
        """`partition(groups)` for the body; every link healed on exit, whatever it raised."""
        await self.partition(groups)
        try:
            yield
        finally:
            await self.heal()

    async def cut(self, source: str, target: str) -> None:
        """Cut one direction: nothing `source` sends reaches `target`; the other way still works."""
        await self.partitioner.cut([(source, target)])

    async def isolate(self, node_id: str) -> None:
        """Cut every link from and to `node_id`."""
        await self.partitioner.isolate(node_id)

    async def heal(self) -> None:
        """Every cut link up again; latency and bandwidth caps stay (`clear_link_faults`)."""
        await self.partitioner.heal_all()

    async def heal_all(self) -> None:
        await self.heal()

    @property
    def cut_links(self) -> set[Link]:
        return self.partitioner.cut_links

    async def shape(self, shape: str | ShapeFunction, rng: random.Random | None = None) -> Cut:
        """Cut exactly the links of a shape (a name in `SHAPES`, or a function); heal the rest.

        Returns what was cut, which prints as `majorities_ring: cut n1 -> n2, ...`.
        """
        function = shape_named(shape) if isinstance(shape, str) else shape
        name = shape if isinstance(shape, str) else getattr(shape, "__name__", "shape")
        links = function(self.node_ids, rng if rng is not None else random.Random())
        await self.partitioner.cut_exactly(links)
        return Cut(name, frozenset(links))

    def _between(self, a: str, b: str) -> list[Link]:
        for node in (a, b):
            if node not in self.nodes:
                raise ValueError(f"no node {node!r}")
        if a == b:
            raise ValueError(f"no link between {a!r} and itself")
        return [(a, b), (b, a)]

    async def latency(self, a: str, b: str, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Every byte between `a` and `b`, either way, arrives `delay_ms` (± jitter) late.

        Set on both proxies between them, in both directions, so a round trip
        costs at least twice the delay; bytes keep their order.  0 removes it.
        """
        await self.partitioner.set_latency(self._between(a, b), delay_ms, jitter_ms)

    async def bandwidth(self, a: str, b: str, bytes_per_second: int | None) -> None:
        """Each direction of each connection between `a` and `b` paced to a rate; None lifts it."""
        await self.partitioner.set_bandwidth(self._between(a, b), bytes_per_second)

    async def reset_connections(self, a: str | None = None, b: str | None = None) -> None:
        """Abort with a TCP reset every live peer connection (those of `a`, or between `a` and `b`).

        The proxies keep listening, so the nodes redial at once.
        """
        if a is None and b is None:
            links = list(self.proxies)
        elif b is None or a is None:
            node = a if b is None else b
            links = [link for link in self.proxies if node in link]
        else:
            links = self._between(a, b)
        await self.partitioner.reset(links)

    async def clear_link_faults(self) -> None:
        """No latency and no bandwidth cap on any link; cuts stay (`heal` heals those)."""
        await self.partitioner.clear()

    def link_state(self) -> dict[Link, dict[str, Any]]:
        """Each link's state: cut, latency, jitter, bandwidth cap and live connections."""
        return self.partitioner.state()

    async def kill(self, node_id: str) -> None:
        """SIGKILL the node: no shutdown of any kind."""
        await self._drop_client(node_id)
        await asyncio.to_thread(self.nodes[node_id].kill)

    async def pause(self, node_id: str) -> None:
        """SIGSTOP the node: its connections stay open, it answers nothing."""
        self.nodes[node_id].pause()

    async def resume(self, node_id: str) -> None:
        self.nodes[node_id].resume()

    async def restart(self, node_id: str, *, wipe: bool = False) -> None:
        """Start the node again (stopped first if running), its data dir removed when `wipe`."""
        node = self.nodes[node_id]
        await self._drop_client(node_id)
        if node.running:
            await asyncio.to_thread(node.stop)
        if wipe:
            await asyncio.to_thread(node.wipe)
        node.start()
        await self._ready(node_id)

    async def wipe_and_restart(self, node_id: str) -> None:
        """Restart the node with an empty data dir: it refills from its peers."""
        await self.restart(node_id, wipe=True)

    async def skew_clock(self, node_id: str, offset_ms: int) -> None:
        """Restart the node with its hybrid logical clock `offset_ms` off the wall clock.

        Through the node's own `REPLICA_CLOCK_OFFSET_MS`, never the OS clock;
        negative runs behind.  The clock never goes below a timestamp the node
        has already seen, so skewing back does not rewind it.
        """
        self.nodes[node_id].env[CLOCK_OFFSET_ENV] = str(int(offset_ms))
        await self.restart(node_id)

    # -- clients and waiting ---------------------------------------------------------------

    async def client(self, node_id: str) -> JsonClient:
        """A connection to the node's real port, kept for later requests."""
        client = self._clients.get(node_id)
        if client is None:
            client = await self.connect(node_id)
            self._clients[node_id] = client
        return client

    async def connect(self, node_id: str) -> JsonClient:
        """A new connection to the node (yours to close), authenticated when there is a password."""
        client = await self.nodes[node_id].connect()
        if self.password is not None:
            await client.auth(self.password)
        return client

    def resp_address(self, node_id: str) -> tuple[str, int]:
        """(host, port) of the node's Redis port, for redis-py."""
        if node_id not in self.resp_ports:
            raise ValueError(f"{node_id} has no RESP port: start the cluster with resp=True")
        return LOOPBACK, self.resp_ports[node_id]

    async def request(self, node_id: str, body: Body) -> Body:
        client = await self.client(node_id)
        return await client.request(body)

    async def request_each(
        self, body: Body, node_ids: Iterable[str] | None = None
    ) -> dict[str, Body]:
        """The same request at every node (or those named): reply bodies without ids."""
        ids = self.node_ids if node_ids is None else list(node_ids)
        return {n: without_ids(await self.request(n, body)) for n in ids}

    async def statuses(self) -> dict[str, Body]:
        return await self.request_each({"type": "status", "digests": True})

    async def wait_linked(self) -> None:
        """Every node connected to every peer, as `proxied_cluster` waits for by default."""
        await eventually(self.statuses, linked, "every peer link up")

    async def wait_quiet(self, what: str = "every link up, nothing pending") -> None:
        """Every node connected to every peer, with no change pending for any of them."""
        await eventually(self.statuses, quiet, what)

    async def converged(
        self, reads: Iterable[Body] = (), timeout: float = CONVERGE_TIMEOUT
    ) -> dict[str, Any]:
        """Until the nodes agree (see `replica.testing.waiting.converged`)."""
        return await converged(self, reads, timeout)

    # -- teardown --------------------------------------------------------------------------

    async def _drop_client(self, node_id: str) -> None:
        client = self._clients.pop(node_id, None)
        if client is not None:
            await client.close()

    async def close(self) -> None:
        """Every client, node, helper process and proxy gone; safe to call twice."""
        for node_id in list(self._clients):
            with contextlib.suppress(OSError, ConnectionError):
                await self._drop_client(node_id)
        for node in self.nodes.values():
            await asyncio.to_thread(node.stop)
        for node in self.nodes.values():
            await asyncio.to_thread(node.reap_helpers)
        await self.partitioner.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {n.node_id} (port {n.port}) log ---\n{n.stderr_text()}"
            for n in self.nodes.values()
        )


Cluster = ProxiedCluster


@contextlib.asynccontextmanager
async def proxied_cluster(
    node_ids: Iterable[str] = ("n1", "n2", "n3"),
    *,
    gossip_interval_ms: int = DEFAULT_GOSSIP_INTERVAL_MS,
    memory: bool = False,
    resp: bool = False,
    secret: bool = False,
    password: bool = False,
    tls: bool = False,
    foreign_ca: Iterable[str] = (),
    node_settings: Mapping[str, Mapping[str, Setting]] | None = None,
    node_env: Mapping[str, Mapping[str, str]] | None = None,
    linked: bool | None = None,
    **cluster: Setting,
) -> AsyncIterator[ProxiedCluster]:
    """A fresh cluster with a proxy on every directed link, in its own temporary directory.

    `cluster` is the `[cluster]` table every node shares; `resp` gives each
    node a Redis port; `secret` a cluster secret, one file of mode 0600 that
    every node's `secret_file` names; `password` a client password likewise
    (`password_file`), which the kit's clients send; `tls` a CA and a certificate per node
    (`foreign_ca`: those nodes' from another CA).  It is yielded once every
    node is connected to every peer, so a first `w: "all"` write is not
    refused for a link still coming up; `linked=False` yields as soon as every
    node listens (the default for one node, with `foreign_ca`, whose links
    never come up, and with a `password_file` of the test's own).
    Every node, helper, proxy and file is gone on exit, whatever happened.
    """
    ids = list(node_ids)
    links = [(a, b) for a in ids for b in ids if a != b]
    ports = free_listen_ports(len(ids) * 2 + len(links))
    node_ports = dict(zip(ids, ports[: len(ids)], strict=True))
    resp_ports = dict(zip(ids, ports[len(ids) : 2 * len(ids)], strict=True)) if resp else {}
    proxies = {
        link: LinkProxy(port, node_ports[link[1]])
        for link, port in zip(links, ports[2 * len(ids) :], strict=True)
    }
    settings = {"gossip_interval_ms": gossip_interval_ms, **cluster}
    with tempfile.TemporaryDirectory(prefix="replica-cluster-") as name:
        if secret:
            write_secret(Path(name) / SECRET_FILE)
            settings = {"secret_file": SECRET_FILE, **settings}
        if password:
            write_secret(Path(name) / PASSWORD_FILE)
            settings = {"password_file": PASSWORD_FILE, **settings}
        tables = certificates.mint(Path(name), ids, foreign_ca) if tls else None
        running = ProxiedCluster(
            Path(name),
            ids,
            node_ports,
            proxies,
            settings,
            memory=memory,
            node_settings=node_settings,
            node_env=node_env,
            resp_ports=resp_ports,
            tls=tables,
        )
        if password:
            running.password = (Path(name) / PASSWORD_FILE).read_text().strip()
        try:
            await running.start()
            if linked is None:  # a password the kit does not know would refuse its `status`
                linked = len(ids) > 1 and not foreign_ca and "password_file" not in cluster
            if linked:
                await running.wait_linked()
            yield running
        finally:
            await running.close()
            print(running.logs())


def cluster(n: int = 3, **options: Any) -> contextlib.AbstractAsyncContextManager[ProxiedCluster]:
    """`proxied_cluster` of nodes n1 … n`n`, with the same options."""
    if n < 1:
        raise ValueError(f"a cluster needs at least one node, not {n}")
    return proxied_cluster([f"n{i}" for i in range(1, n + 1)], **options)
