"""`replica status`: ask every node of a cluster file for its status, print one table.

A node that does not answer within the timeout is shown as down rather than
hanging the command: status is what an operator runs when something is wrong.
With `[tls]` in the file it speaks TLS, verifying each node's certificate by
the node's id, and presents none of its own: it is a client.  With
`password_file` it sends the client password (`auth`) first.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path
from typing import Any

import orjson
import uvloop

from replica.cli.config import ClusterConfig, ConfigError, load_cluster
from replica.cli.exit_codes import EXIT_FAILURE, EXIT_OK
from replica.cli.fault_command import network_lines
from replica.crdt.registry import NAMES
from replica.transports.tls import TlsFiles, client_context

TIMEOUT_SECONDS = 2.0


def run_status(args: argparse.Namespace) -> int:
    """`replica status`: exit code 1 when a node is down; ConfigError for a bad cluster file.

    Under a running `cluster up --faults` for the file, the links it has cut
    or delayed follow the table: a peer shown DOWN may be a cut link.
    """
    config = load_cluster(args.config)
    rows, links = uvloop.run(_status_and_links(args.config, config))
    print("\n".join([format_table(rows), *links]))
    return EXIT_OK if all(isinstance(status, dict) for _, status in rows) else EXIT_FAILURE


async def fetch_status(
    host: str,
    port: int,
    timeout: float = TIMEOUT_SECONDS,
    tls: ssl.SSLContext | None = None,
    node_id: str | None = None,
    password: bytes | None = None,
) -> dict[str, Any]:
    """One node's `status_ok` body; raises OSError or TimeoutError when it cannot be had.

    With `tls`, over TLS to a certificate naming `node_id`; with `password`,
    after authenticating with it.
    """

    async def ask() -> dict[str, Any]:
        hostname = None if tls is None else node_id or host
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, server_hostname=hostname
        )
        try:
            if password is not None:
                auth = {"type": "auth", "password": password.decode(), "msg_id": 0}
                writer.write(orjson.dumps(auth) + b"\n")
                answer = orjson.loads(await reader.readline())
                if not isinstance(answer, dict) or answer.get("type") != "auth_ok":
                    raise OSError(f"password refused: {answer!r}")
            writer.write(b'{"type": "status", "msg_id": 1}\n')
            reply = orjson.loads(await reader.readline())
        finally:
            writer.close()
        if not isinstance(reply, dict) or reply.get("type") != "status_ok":
            raise OSError(f"unexpected answer {reply!r}")
        return reply

    return await asyncio.wait_for(ask(), timeout)


async def _status_and_links(
    config_path: str, config: ClusterConfig
) -> tuple[list[tuple[str, dict[str, Any] | str]], list[str]]:
    return await asyncio.gather(cluster_status(config), network_lines(config_path, config.node_ids))


async def cluster_status(config: ClusterConfig) -> list[tuple[str, dict[str, Any] | str]]:
    tls = None if config.tls is None else _client_tls(config.tls.ca_file)
    password = config.password()

    async def one(node_id: str, host: str, port: int) -> tuple[str, dict[str, Any] | str]:
        try:
            status = await fetch_status(host, port, tls=tls, node_id=node_id, password=password)
            return node_id, status
        except (OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            return node_id, f"down ({type(exc).__name__}: {exc})" if str(exc) else "down"

    return list(await asyncio.gather(*(one(n.id, n.host, n.port) for n in config.nodes)))


def _client_tls(ca_file: Path) -> ssl.SSLContext:
    """A client's context trusting `ca_file`; ConfigError naming it when it cannot be used."""
    try:
        return client_context(TlsFiles(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[tls] ca_file {ca_file}: cannot use: {exc}") from None


def format_table(rows: list[tuple[str, dict[str, Any] | str]]) -> str:
    """One row per node: its keys of each data type, max siblings, disk, build, tombstones
    (held, and dropped since it started) and peers."""
    header = (
        "node",
        *NAMES,
        "max sib",
        "disk",
        "build",
        "tombstones",
        "peers (connected, last ack, pending)",
    )
    lines = [header]
    for node_id, status in rows:
        if isinstance(status, str):
            lines.append((node_id, *("-" for _ in NAMES), "-", "-", "-", "-", status))
            continue
        keys = status.get("keys", {})
        siblings = status.get("max_siblings", {})
        lines.append(
            (
                node_id,
                *(str(keys.get(name, 0)) for name in NAMES),
                str(max(siblings.values(), default=0)),
                _disk(status.get("durability", {})),
                str(status.get("build", "?")),
                _tombstones(status),
                "  ".join(_peer(p) for p in status.get("peers", [])) or "none",
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in lines
    )


def _disk(durability: dict[str, Any]) -> str:
    """The durability mode, a disk that is not "ok", and the failed commits and checkpoints."""
    cell = str(durability.get("mode", "?"))
    if durability.get("disk", "ok") != "ok":
        cell += f",disk-{str(durability['disk']).upper()}"
    for field, name in (("failures", "commits"), ("checkpoint_failures", "checkpoints")):
        if durability.get(field):
            cell += f",{name}-FAILED:{durability[field]}"
    return cell


def _tombstones(status: dict[str, Any]) -> str:
    """Keys holding a tombstone now, and how many were dropped since the node started."""
    held = sum(status.get("tombstones", {}).values())
    gone = sum(status.get("tombstones_collected", {}).values())
    return f"{held},{gone}-gone"


def _peer(peer: dict[str, Any]) -> str:
    state = "up" if peer.get("connected") else "DOWN"
    age = peer.get("last_ack_age_ms")
    ack = "never" if age is None else f"{age}ms"
    return f"{peer.get('id')}:{state},{ack},{peer.get('pending', 0)}"
