"""`replica fault`: cut, partition, delay and heal the links of a running `cluster up --faults`.

The command finds the cluster's control endpoint through the state file
beside the cluster file (`fault_state_file`), sends it one request
(`fault_requests`), and prints every link that is not plain afterwards, one
line each: `n1 -> n2   cut`, `n1 <-> n3  latency 100 ms`.  A request naming
a node the file does not have, or a partition that leaves a node out or puts
it twice, is refused before anything is sent: exit code 2, one line.  No
running `cluster up --faults` for the file: exit code 1, one line.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop

from replica.cli.config import load_cluster
from replica.cli.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from replica.cli.fault_requests import (
    MALFORMED,
    NOT_SUPPORTED,
    FaultRequestError,
    check_request,
    describe_links,
    parse_duration_ms,
    split_groups,
)
from replica.cli.fault_state_file import FaultEndpoint, NoFaultEndpoint, read_state_file

TIMEOUT_SECONDS = 30.0  # healing waits for each proxy to listen again, a few seconds at worst
STATUS_TIMEOUT_SECONDS = 2.0


class EndpointUnreachable(NoFaultEndpoint):
    """A state file names a live supervisor, but its endpoint does not answer."""


class EndpointError(Exception):
    """The endpoint answered with an error: `code` is the protocol's."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


def run_fault(args: argparse.Namespace) -> int:
    """`replica fault`: exit 2 for a bad request, 1 when no cluster runs with faults."""
    config = load_cluster(args.config)
    try:
        body = request_body(args)
        check_request(body, config.node_ids)
    except (ValueError, FaultRequestError) as exc:
        print(f"replica fault: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        endpoint = read_state_file(args.config)
        reply = uvloop.run(ask(endpoint, body, TIMEOUT_SECONDS))
    except NoFaultEndpoint as exc:
        print(f"replica fault: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except EndpointError as exc:
        print(f"replica fault: {exc}", file=sys.stderr)
        return EXIT_USAGE if exc.code in (MALFORMED, NOT_SUPPORTED) else EXIT_FAILURE
    print("\n".join(describe_links(reply["links"], config.node_ids)))
    return EXIT_OK


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    """The request the command line asks for; ValueError for words that mean none."""
    action = args.action
    if action == "partition":
        return {"type": action, "groups": split_groups(args.groups)}
    if action == "isolate":
        return {"type": action, "node": args.node}
    if action == "cut":
        return {"type": action, "from": args.source, "to": args.target}
    if action == "latency":
        body: dict[str, Any] = {
            "type": action,
            "nodes": [args.a, args.b],
            "delay_ms": parse_duration_ms(args.delay),
        }
        if args.jitter:
            if len(args.jitter) != 2 or args.jitter[0] != "jitter":
                raise ValueError(f"after the delay: jitter DURATION, not {' '.join(args.jitter)!r}")
            body["jitter_ms"] = parse_duration_ms(args.jitter[1])
        return body
    return {"type": action}


async def ask(endpoint: FaultEndpoint, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The endpoint's `<type>_ok` reply; NoFaultEndpoint when it cannot be had, EndpointError."""

    async def exchange() -> Any:
        reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        try:
            writer.write(orjson.dumps({**body, "token": endpoint.token}) + b"\n")
            return orjson.loads(await reader.readline())
        finally:
            writer.close()

    where = f"{endpoint.host}:{endpoint.port} (pid {endpoint.pid})"
    try:
        reply = await asyncio.wait_for(exchange(), timeout)
    except (OSError, TimeoutError, orjson.JSONDecodeError) as exc:
        raise EndpointUnreachable(
            f"the fault control endpoint at {where} does not answer ({type(exc).__name__})"
        ) from None
    if not isinstance(reply, dict):
        raise EndpointUnreachable(f"the fault control endpoint at {where} answered {reply!r}")
    if reply.get("type") == "error":
        raise EndpointError(int(reply.get("code", 13)), str(reply.get("text", "")))
    return reply


async def network_lines(config_path: str | Path, node_ids: Sequence[str]) -> list[str]:
    """For `replica status`: a heading and every link cut or delayed, or nothing at all.

    Nothing when no `cluster up --faults` runs for the file: without one
    every link is plain.
    """
    try:
        endpoint = read_state_file(config_path)
        reply = await ask(endpoint, {"type": "show"}, STATUS_TIMEOUT_SECONDS)
    except (EndpointUnreachable, EndpointError) as exc:
        return ["", f"links: {exc}"]
    except NoFaultEndpoint:
        return []
    return ["", "links (cluster up --faults):", *describe_links(reply["links"], node_ids)]
