"""`cluster.toml`: the nodes of a cluster and the settings they share.

Every node of a cluster reads the same file and finds itself by id.  The file
is checked whole before anything starts, and every problem is reported as a
`ConfigError` carrying one line that names the file and what is wrong, so a
mistyped field stops the node at once instead of being silently ignored.

    [cluster]
    gossip_interval_ms = 200      # optional, > 0
    max_line_bytes = 1048576      # optional, > 0
    mvcc_retention_ms = 3600000   # optional, >= 0 (0: no automatic GC horizon)
    durability = "sync"           # optional: "sync" (reply once on disk) or "async"
    flush_interval_ms = 10        # optional, > 0: how often "async" commits
    max_clock_skew_ms = 60000     # optional, >= 0: how far ahead a client timestamp may be
    commit_timeout_ms = 5000      # optional, > 0: a "sync" write not on disk by then gets error 13
    secret_file = "secret"        # optional, relative to the file's directory: peers prove it
    insecure = false              # optional: true serves a non-loopback host with no secret
    password_file = "password"    # optional, like secret_file: clients send it (`auth`) first
    max_connections = 10000       # optional, > 0: open connections per listening port
    partial_line_timeout_ms = 10000  # optional, > 0: an unfinished request line closes after it
    sibling_warn = 25             # optional, > 0: a key reaching this many siblings is logged
    max_siblings = 100            # optional, >= sibling_warn: more refuses a client write (22)
    max_value_bytes = 1048576     # optional, > 0: a larger JSON value refuses the write (12)
    w = 1                         # optional: nodes holding a write before its reply, 1..nodes,
    r = 1                         #   "one", "quorum" or "all"; r: nodes whose states a read merges
    request_timeout_ms = 2000     # optional, > 0: a quorum not reached by then is error 0

    [[nodes]]                     # one or more
    id = "n1"
    host = "127.0.0.1"
    port = 7001
    data_dir = "data/n1"          # optional, relative to the file's directory
    resp_port = 6379              # optional: also serve Redis clients (RESP2) on this port
    tls_cert_file = "n1.pem"      # optional: this node's own [tls] cert_file (and tls_key_file)

    [tls]                         # optional: both ports serve TLS only, peers use mutual TLS
    ca_file = "ca.pem"            # paths relative to the file's directory
    cert_file = "node.pem"        # a certificate naming the node id (SAN DNS)
    key_file = "node.key"         # optional when cert_file holds the key

The secret file (`REPLICA_SECRET_FILE` overrides `secret_file`) must be a
non-empty file that neither group nor others may read or write; `replica
keygen` writes one.  So must the password file.  Protected mode: a node whose host is not a loopback
address refuses to start without a secret unless `insecure = true`, since
anyone who can reach its port could otherwise send it peer messages;
`[tls]` satisfies it too.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from replica.cli import config_fields as fields
from replica.cli.config_fields import ConfigError
from replica.cli.secret_files import read_secret
from replica.durable.durability import DEFAULT_COMMIT_TIMEOUT_MS, DEFAULT_FLUSH_INTERVAL_MS, SYNC
from replica.durable.durability import MODES as DURABILITY_MODES
from replica.framing import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_PARTIAL_LINE_TIMEOUT_MS,
)
from replica.keyspaces import DEFAULT_MAX_CLOCK_SKEW_MS, DEFAULT_MVCC_RETENTION_MS
from replica.limits import DEFAULT_MAX_SIBLINGS, DEFAULT_MAX_VALUE_BYTES, DEFAULT_SIBLING_WARN
from replica.replication.quorum import DEFAULT_REQUEST_TIMEOUT_MS, NAMED_SIZES
from replica.transports.tls import TlsFiles

if TYPE_CHECKING:
    from replica.node.router import NodeSettings

DEFAULT_GOSSIP_INTERVAL_MS = 200
DEFAULT_DURABILITY = SYNC
SECRET_FILE_ENV = "REPLICA_SECRET_FILE"
CLOCK_OFFSET_ENV = "REPLICA_CLOCK_OFFSET_MS"

TOP_LEVEL_FIELDS = ("cluster", "nodes", "tls")
TLS_FIELDS = ("ca_file", "cert_file", "key_file")


def quorum_field(table: fields.Table, name: str, where: str, base_dir: Path | None) -> int | str:
    """`w` or `r`: 1 or more (at most the cluster size, checked with the nodes), or a name."""
    value = table.get(name, 1)
    if (type(value) is int and value >= 1) or value in NAMED_SIZES:
        return cast(int | str, value)
    names = ", ".join(f'"{n}"' for n in NAMED_SIZES)
    raise ConfigError(f"{where} {name} must be an integer of 1 or more or {names}, not {value!r}")


CLUSTER_FIELDS: dict[str, fields.Reader] = {
    "gossip_interval_ms": fields.positive_field(DEFAULT_GOSSIP_INTERVAL_MS),
    "max_line_bytes": fields.positive_field(DEFAULT_MAX_LINE_BYTES),
    "mvcc_retention_ms": fields.non_negative_field(DEFAULT_MVCC_RETENTION_MS),
    "durability": fields.choice_field(DEFAULT_DURABILITY, DURABILITY_MODES),
    "flush_interval_ms": fields.positive_field(DEFAULT_FLUSH_INTERVAL_MS),
    "max_clock_skew_ms": fields.non_negative_field(DEFAULT_MAX_CLOCK_SKEW_MS),
    "commit_timeout_ms": fields.positive_field(DEFAULT_COMMIT_TIMEOUT_MS),
    "secret_file": fields.path,
    "insecure": fields.boolean_field(False),
    "password_file": fields.path,
    "max_connections": fields.positive_field(DEFAULT_MAX_CONNECTIONS),
    "partial_line_timeout_ms": fields.positive_field(DEFAULT_PARTIAL_LINE_TIMEOUT_MS),
    "sibling_warn": fields.positive_field(DEFAULT_SIBLING_WARN),
    "max_siblings": fields.positive_field(DEFAULT_MAX_SIBLINGS),
    "max_value_bytes": fields.positive_field(DEFAULT_MAX_VALUE_BYTES),
    "w": quorum_field,
    "r": quorum_field,
    "request_timeout_ms": fields.positive_field(DEFAULT_REQUEST_TIMEOUT_MS),
}
"""Each `[cluster]` field, named as `ClusterConfig` names it, and how it is read."""
NODE_FIELDS = ("id", "host", "port", "data_dir", "resp_port", "tls_cert_file", "tls_key_file")

__all__ = ["ConfigError"]  # raised by every loader here


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    host: str
    port: int
    data_dir: str | None = None
    resp_port: int | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def resp_address(self) -> str | None:
        return None if self.resp_port is None else f"{self.host}:{self.resp_port}"


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    gossip_interval_ms: int = DEFAULT_GOSSIP_INTERVAL_MS
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    mvcc_retention_ms: int = DEFAULT_MVCC_RETENTION_MS
    durability: str = DEFAULT_DURABILITY
    flush_interval_ms: int = DEFAULT_FLUSH_INTERVAL_MS
    max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS
    commit_timeout_ms: int = DEFAULT_COMMIT_TIMEOUT_MS
    secret_file: str | None = None
    insecure: bool = False
    password_file: str | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    partial_line_timeout_ms: int = DEFAULT_PARTIAL_LINE_TIMEOUT_MS
    sibling_warn: int = DEFAULT_SIBLING_WARN
    max_siblings: int = DEFAULT_MAX_SIBLINGS
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    w: int | str = 1
    r: int | str = 1
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    nodes: tuple[NodeConfig, ...] = ()
    tls: TlsFiles | None = None
    """`[tls]` as written; `tls_files` applies a node's own certificate."""

    @property
    def node_ids(self) -> list[str]:
        return [n.id for n in self.nodes]

    def node(self, node_id: str) -> NodeConfig:
        """The node called `node_id`; ConfigError when the file has none."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        listed = ", ".join(self.node_ids)
        raise ConfigError(f"unknown node id {node_id!r} (the file lists {listed})")

    def peers(self, node_id: str) -> dict[str, tuple[str, int]]:
        """Every other node's address, by id."""
        return {n.id: (n.host, n.port) for n in self.nodes if n.id != node_id}

    def node_settings(
        self, clock_offset_ms: int = 0, secret: bytes | None = None, password: bytes | None = None
    ) -> NodeSettings:
        """A node's settings from the file, its clock shifted by `clock_offset_ms` (tests)."""
        from replica.node.router import NodeSettings

        return NodeSettings(
            max_line_bytes=self.max_line_bytes,
            mvcc_retention_ms=self.mvcc_retention_ms,
            max_clock_skew_ms=self.max_clock_skew_ms,
            clock_offset_ms=clock_offset_ms,
            secret=secret,
            password=password,
            max_connections=self.max_connections,
            partial_line_timeout_ms=self.partial_line_timeout_ms,
            sibling_warn=self.sibling_warn,
            max_siblings=self.max_siblings,
            max_value_bytes=self.max_value_bytes,
            w=self.w,
            r=self.r,
            request_timeout_ms=self.request_timeout_ms,
        )

    def password(self) -> bytes | None:
        """The password clients must send, from `password_file`; None without one."""
        path = self.password_file
        return None if path is None else read_secret(path, "password file")

    def secret(self, environ: Mapping[str, str] = os.environ) -> bytes | None:
        """The cluster secret: from `$REPLICA_SECRET_FILE`, else `secret_file`; None if neither."""
        path = environ.get(SECRET_FILE_ENV) or self.secret_file
        return None if path is None else read_secret(path)

    def tls_files(self, me: NodeConfig) -> TlsFiles | None:
        """The TLS files of node `me`; None without `[tls]`."""
        if self.tls is None:
            return None
        if me.tls_cert_file is None:
            return self.tls
        key = None if me.tls_key_file is None else Path(me.tls_key_file)
        return TlsFiles(self.tls.ca_file, Path(me.tls_cert_file), key)

    def protected_mode_refusal(self, me: NodeConfig, secret: bytes | None) -> str | None:
        """Why `me` may not start unprotected (a non-loopback host, no secret); None if it may."""
        if secret is not None or self.tls is not None or self.insecure or is_loopback(me.host):
            return None
        return (
            f"node {me.id!r} listens on {me.host}, not a loopback address, and has no cluster "
            "secret, so anyone who reaches it could send it peer messages: set [cluster] "
            "secret_file (see `replica keygen`) or [tls], or insecure = true to serve it anyway"
        )


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_cluster(path: str | Path) -> ClusterConfig:
    """Read and check a cluster file; ConfigError (one line, naming the file) when unusable."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid UTF-8 at byte {exc.start}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_cluster(document, base_dir=path.absolute().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load_node(path: str | Path, node_id: str) -> tuple[ClusterConfig, NodeConfig]:
    """The cluster file at `path` and node `node_id` of it; ConfigError naming the file."""
    config = load_cluster(path)
    try:
        return config, config.node(node_id)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_cluster(document: dict[str, Any], base_dir: Path | None = None) -> ClusterConfig:
    """Check a decoded cluster document; relative paths are joined to `base_dir`."""
    fields.no_unknown_fields(document, TOP_LEVEL_FIELDS, "top level")
    cluster = document.get("cluster", {})
    if not isinstance(cluster, dict):
        raise ConfigError("'cluster' must be a table ([cluster])")
    fields.no_unknown_fields(cluster, list(CLUSTER_FIELDS), "[cluster]")
    settings = {
        name: read(cluster, name, "[cluster]", base_dir) for name, read in CLUSTER_FIELDS.items()
    }
    if settings["sibling_warn"] > settings["max_siblings"]:
        raise ConfigError(
            f"[cluster] sibling_warn ({settings['sibling_warn']}) must not exceed "
            f"max_siblings ({settings['max_siblings']})"
        )

    raw_nodes = document.get("nodes")
    if raw_nodes is None or raw_nodes == []:
        raise ConfigError("no nodes: add at least one [[nodes]] table")
    if not isinstance(raw_nodes, list):
        raise ConfigError("'nodes' must be an array of tables ([[nodes]])")
    nodes = tuple(_node(raw, index, base_dir) for index, raw in enumerate(raw_nodes, start=1))
    tls = _tls(document.get("tls"), nodes, base_dir)

    ids: set[str] = set()
    addresses: dict[tuple[str, int], str] = {}
    for node in nodes:
        if node.id in ids:
            raise ConfigError(f"duplicate node id {node.id!r}")
        ids.add(node.id)
        if node.resp_port == node.port:
            raise ConfigError(f"node {node.id!r}: resp_port must differ from port ({node.port})")
        for node_port in (node.port, node.resp_port):
            if node_port is None:
                continue
            other = addresses.setdefault((node.host, node_port), node.id)
            if other != node.id:
                raise ConfigError(
                    f"nodes {other!r} and {node.id!r} both use {node.host}:{node_port}"
                )
    for name in ("w", "r"):
        if type(settings[name]) is int and settings[name] > len(nodes):
            raise ConfigError(
                f"[cluster] {name} ({settings[name]}) is more than the {len(nodes)} nodes listed"
            )
    return ClusterConfig(**settings, nodes=nodes, tls=tls)


def _node(raw: Any, index: int, base_dir: Path | None) -> NodeConfig:
    where = f"node {index}"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table ([[nodes]])")
    if isinstance(raw.get("id"), str) and raw["id"]:
        where = f"node {raw['id']!r}"
    fields.no_unknown_fields(raw, NODE_FIELDS, where)
    node_id = fields.string(raw, "id", where)
    host = fields.string(raw, "host", where)
    if "port" not in raw:
        raise ConfigError(f"{where}: missing field 'port'")
    port = fields.port(raw["port"], "port", where)
    resp_port = raw.get("resp_port")
    if resp_port is not None:
        resp_port = fields.port(resp_port, "resp_port", where)
    data_dir = raw.get("data_dir")
    if data_dir is not None:
        if not isinstance(data_dir, str) or not data_dir:
            raise ConfigError(f"{where}: data_dir must be a non-empty string, not {data_dir!r}")
        if base_dir is not None:
            data_dir = str(base_dir / data_dir)
    files = {
        name: fields.path(raw, name, where, base_dir) for name in ("tls_cert_file", "tls_key_file")
    }
    return NodeConfig(node_id, host, port, data_dir, resp_port, **files)


def _tls(raw: Any, nodes: tuple[NodeConfig, ...], base_dir: Path | None) -> TlsFiles | None:
    """`[tls]`: ca_file, and cert_file unless every node names its own."""
    if raw is None:
        for node in nodes:
            if node.tls_cert_file is not None or node.tls_key_file is not None:
                raise ConfigError(f"node {node.id!r}: tls_cert_file or tls_key_file needs [tls]")
        return None
    if not isinstance(raw, dict):
        raise ConfigError("'tls' must be a table ([tls])")
    fields.no_unknown_fields(raw, TLS_FIELDS, "[tls]")
    ca_file, cert_file, key_file = (
        fields.path(raw, name, "[tls]", base_dir) for name in TLS_FIELDS
    )
    if ca_file is None:
        raise ConfigError("[tls]: missing field 'ca_file'")
    for node in nodes:
        if node.tls_cert_file is None and cert_file is None:
            raise ConfigError(
                f"node {node.id!r}: no certificate ([tls] cert_file or tls_cert_file)"
            )
    key = None if key_file is None else Path(key_file)
    return TlsFiles(Path(ca_file), None if cert_file is None else Path(cert_file), key)
