"""Quorum writes and reads between two `replica stdio` nodes, the test being the network."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.harness import REPLY_TIMEOUT
from tests.test_stdio_pair import CLIENT, NODE_IDS, StdioPair, stdio_pair

HELD_FOR = 0.3  # how long a reply that waits for the held peer must stay unanswered


def request_line(node_id: str, body: dict[str, object]) -> bytes:
    return orjson.dumps({"src": CLIENT, "dest": node_id, "body": body}) + b"\n"


async def next_reply(pair: StdioPair, node_id: str) -> dict[str, object]:
    message = await asyncio.wait_for(pair.inbox[node_id].get(), REPLY_TIMEOUT)
    body: dict[str, object] = message["body"]
    return body


async def initialised(pair: StdioPair) -> None:
    for node_id in NODE_IDS:
        body = {"type": "init", "node_id": node_id, "node_ids": NODE_IDS}
        assert (await pair.request(node_id, body))["type"] == "init_ok"


async def test_a_w2_write_waits_for_the_peer_and_the_replies_after_it_keep_their_order(
    scratch_dir: Path,
) -> None:
    async with stdio_pair(scratch_dir) as pair:
        await initialised(pair)
        pair.hold()
        first = {"type": "mv_write", "key": "a", "value": 1, "w": 2, "msg_id": 101}
        second = {"type": "mv_write", "key": "b", "value": 2, "msg_id": 102}
        pair._write("n1", request_line("n1", first) + request_line("n1", second))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pair.inbox["n1"].get(), HELD_FOR)
        pair.release()
        replies = [await next_reply(pair, "n1"), await next_reply(pair, "n1")]
        assert [r["in_reply_to"] for r in replies] == [101, 102], replies
        assert [r["type"] for r in replies] == ["mv_write_ok", "mv_write_ok"], replies


async def test_an_r2_read_merges_what_the_peer_holds(scratch_dir: Path) -> None:
    async with stdio_pair(scratch_dir) as pair:
        await initialised(pair)
        pair.hold()
        written = await pair.request("n1", {"type": "lww_write", "key": "k", "value": "v"})
        assert written["type"] == "lww_write_ok", written
        assert (await pair.request("n2", {"type": "lww_read", "key": "k"}))["code"] == 20
        pair._write("n2", request_line("n2", {"type": "lww_read", "key": "k", "r": 2, "msg_id": 7}))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pair.inbox["n2"].get(), HELD_FOR)
        pair.release()
        reply = await next_reply(pair, "n2")
        assert reply["type"] == "lww_read_ok" and reply["value"] == "v", reply
