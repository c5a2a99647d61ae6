"""A client that records every request it makes in a `History`, for `check` to judge.

Contract: a `RecordingClient` is a `JsonClient` (every typed method, `call`
and `checked` included, goes through `request`) that records each request as
`history.invoke(node, body)` before sending it, then ends the record with the
reply (`history.complete`: an error reply fails, definitely or not by its
code, any other is ok), or as unknown when no reply comes (a timeout, a lost
connection, the calling task cancelled).  It returns and raises exactly what
a `JsonClient` does: an unknown outcome re-raises the `TimeoutError`,
`ConnectionError` or `OSError`, so a scenario decides whether to go on, and
the history already says that the write may or may not have happened.  Once
the connection is lost, later requests raise `ConnectionError` unrecorded:
they were never sent.  Raw lines (`send`, `send_raw`, `envelope_request`) are
not recorded.  Every message type is recorded as sent, deletes and a
request's `w` or `r` included.

`async with recording_clients(cluster, history) as clients:` opens one per
node, each on a connection of its own (never the cluster's kept one, so
writers may run while `cluster.converged` polls), and closes them on exit;
`final_reads(cluster, history)` reads every key the history touched on every
node (MVCC keys also at each acknowledged version's and tombstone's
timestamp), which is what `check` compares the history with.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

from replica.testing.client import REPLY_TIMEOUT, Body, JsonClient
from replica.testing.cluster import ProxiedCluster
from replica.testing.history import FinalRead, History, final_read_requests

LOST = (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError)
"""What a request may raise when its outcome cannot be known."""


class RecordingClient(JsonClient):
    """One connection to `node` whose every request and outcome goes into `history`."""

    def __init__(self, client: JsonClient, node: str, history: History) -> None:
        """Take over `client`'s connection (use only this object from now on)."""
        super().__init__(client.reader, client.writer)
        self.next_msg_id = client.next_msg_id
        self.node = node
        self.history = history
        self.lost: str | None = None
        """Why the connection is gone, once a request lost it; None while it serves."""

    async def request(self, body: Body, timeout: float = REPLY_TIMEOUT) -> Body:
        """`JsonClient.request`, recorded: ok or failed by the reply, unknown without one."""
        if self.lost is not None:
            raise ConnectionError(f"connection to {self.node} lost earlier: {self.lost}")
        index = self.history.invoke(self.node, body)
        try:
            reply = await super().request(body, timeout)
        except LOST as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
            self.history.unknown(index, reason)
            if not isinstance(exc, TimeoutError):
                self.lost = reason
            raise
        except asyncio.CancelledError:
            self.history.unknown(index, "cancelled")
            raise
        self.history.complete(index, reply)
        return reply


async def recording_client(cluster: ProxiedCluster, node: str, history: History) -> RecordingClient:
    """A new connection to `node` of a running cluster, recording into `history`; close it."""
    return RecordingClient(await cluster.connect(node), node, history)


@contextlib.asynccontextmanager
async def recording_clients(
    cluster: ProxiedCluster, history: History, node_ids: Iterable[str] | None = None
) -> AsyncIterator[dict[str, RecordingClient]]:
    """One `RecordingClient` per node (or per node named), each on a connection of its own,
    all closed on exit."""
    ids = cluster.node_ids if node_ids is None else list(node_ids)
    clients: dict[str, RecordingClient] = {}
    try:
        for node in ids:
            clients[node] = await recording_client(cluster, node, history)
        yield clients
    finally:
        for client in clients.values():
            await client.close()


async def final_reads(
    cluster: ProxiedCluster, history: History, node_ids: Iterable[str] | None = None
) -> list[FinalRead]:
    """Every read `check` needs (`final_read_requests`) from every node (or those named).

    Made through the cluster's own clients, so they are not part of the history.
    """
    ids = cluster.node_ids if node_ids is None else list(node_ids)
    return [
        FinalRead(node, request, await cluster.request(node, request))
        for request in final_read_requests(history)
        for node in ids
    ]
