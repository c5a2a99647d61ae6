"""The TCP transport, against a real node process over real sockets."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import time

import orjson
import pytest

from tests.conftest import SMALL_MAX_LINE_BYTES
from tests.harness import JsonClient, NodeProcess

INIT = {"type": "init", "node_id": "n1", "node_ids": ["n1"]}


async def test_bare_form_gets_a_bare_reply(node: NodeProcess) -> None:
    async with await node.connect() as client:
        assert await client.request({**INIT, "msg_id": 1}) == {
            "type": "init_ok",
            "in_reply_to": 1,
            "msg_id": 0,
        }


async def test_envelope_form_gets_an_envelope_reply(node: NodeProcess) -> None:
    async with await node.connect() as client:
        reply = await client.envelope_request({**INIT, "msg_id": 7}, src="c9", dest="n1")
        assert reply == {
            "src": "n1",
            "dest": "c9",
            "body": {"type": "init_ok", "in_reply_to": 7, "msg_id": 0},
        }


async def test_init_naming_another_node_is_refused(node: NodeProcess) -> None:
    async with await node.connect() as client:
        reply = await client.request({**INIT, "node_id": "n2"})
        assert (reply["type"], reply["code"]) == ("error", 22)


async def test_mv_read_of_an_absent_key(node: NodeProcess) -> None:
    async with await node.connect() as client:
        reply = await client.request({"type": "mv_read", "msg_id": 1, "key": "absent"})
        assert reply == {
            "type": "mv_read_ok",
            "in_reply_to": 1,
            "msg_id": 0,
            "values": [],
            "context": {},
        }
        reply = await client.envelope_request({"type": "mv_read", "msg_id": 2, "key": "absent"})
        assert reply["body"] == {
            "type": "mv_read_ok",
            "in_reply_to": 2,
            "msg_id": 1,
            "values": [],
            "context": {},
        }


async def test_reply_msg_ids_count_up_from_zero(node: NodeProcess) -> None:
    async with await node.connect() as client:
        seen = []
        for _ in range(3):
            seen.append((await client.request(INIT))["msg_id"])
        await client.send_raw(b"not json\n")
        seen.append((await client.read_json())["msg_id"])
        seen.append((await client.request({"type": "no_such_type"}))["msg_id"])
        seen.append((await client.request(INIT))["msg_id"])
    assert seen == [0, 1, 2, 3, 4, 5]


async def assert_still_serving(client: JsonClient) -> None:
    reply = await client.request({**INIT, "msg_id": 999})
    assert reply["type"] == "init_ok"
    assert reply["in_reply_to"] == 999


@pytest.mark.parametrize(
    "line",
    [b"this is not json", b"\xff\xfe{\x80}", b"[1, 2, 3]", b'"a string"', b"{"],
    ids=["garbage", "invalid-utf8", "array", "string", "truncated"],
)
async def test_an_unreadable_line_gets_error_12_and_the_connection_keeps_serving(
    node: NodeProcess, line: bytes
) -> None:
    async with await node.connect() as client:
        await client.send_raw(line + b"\n")
        reply = await client.read_json()
        assert (reply["type"], reply["code"]) == ("error", 12)
        assert isinstance(reply["text"], str) and reply["text"]
        await assert_still_serving(client)


async def test_an_ill_typed_field_gets_error_12(node: NodeProcess) -> None:
    async with await node.connect() as client:
        reply = await client.request({"type": "mv_read", "msg_id": 1, "key": 5})
        assert (reply["type"], reply["code"], reply["in_reply_to"]) == ("error", 12, 1)
        await assert_still_serving(client)


async def test_an_unknown_type_gets_error_10(node: NodeProcess) -> None:
    async with await node.connect() as client:
        reply = await client.request({"type": "frobnicate", "msg_id": 4})
        assert (reply["type"], reply["code"], reply["in_reply_to"]) == ("error", 10, 4)
        await assert_still_serving(client)


async def test_netcat_line_endings_are_accepted(node: NodeProcess) -> None:
    async with await node.connect() as client:
        await client.send_raw(b'{"type": "init", "msg_id": 3, "node_id": "n1", "node_ids": []}\r\n')
        assert (await client.reply_to(3))["type"] == "init_ok"


async def test_pipelined_requests_in_one_write_all_get_replies_in_order(node: NodeProcess) -> None:
    async with await node.connect() as client:
        data = b"".join(orjson.dumps({**INIT, "msg_id": i}) + b"\n" for i in range(1, 501))
        await client.send_raw(data)
        replies = [await client.read_json() for _ in range(500)]
    assert [r["in_reply_to"] for r in replies] == list(range(1, 501))
    assert [r["msg_id"] for r in replies] == list(range(500))


@pytest.mark.parametrize("newline", [True, False], ids=["terminated", "unterminated"])
async def test_an_oversized_line_gets_error_12_and_closes_only_its_connection(
    node: NodeProcess, newline: bool
) -> None:
    async with await node.connect() as bystander, await node.connect() as offender:
        await assert_still_serving(bystander)
        padding = "x" * (SMALL_MAX_LINE_BYTES + 100)
        line = orjson.dumps({"type": "mv_read", "msg_id": 5, "key": padding})
        await offender.send_raw(line + (b"\n" if newline else b""))
        reply = await offender.read_json()
        assert (reply["type"], reply["code"]) == ("error", 12)
        assert "max_line_bytes" in reply["text"]
        assert await offender.closed_by_peer()
        await assert_still_serving(bystander)


async def test_replies_due_before_an_oversized_line_are_sent_first(node: NodeProcess) -> None:
    async with await node.connect() as client:
        good = orjson.dumps({**INIT, "msg_id": 1}) + b"\n"
        await client.send_raw(good + b"y" * (SMALL_MAX_LINE_BYTES * 2))
        first = await client.read_json()
        second = await client.read_json()
        assert (first["type"], first["in_reply_to"]) == ("init_ok", 1)
        assert (second["type"], second["code"]) == ("error", 12)
        assert await client.closed_by_peer()


async def test_a_line_of_exactly_max_line_bytes_is_served(node: NodeProcess) -> None:
    async with await node.connect() as client:
        base = orjson.dumps({**INIT, "msg_id": 1, "pad": ""})
        line = orjson.dumps({**INIT, "msg_id": 1, "pad": "p" * (SMALL_MAX_LINE_BYTES - len(base))})
        assert len(line) == SMALL_MAX_LINE_BYTES
        await client.send_raw(line + b"\n")
        assert (await client.reply_to(1))["type"] == "init_ok"


async def test_a_hundred_concurrent_connections_each_get_their_replies(node: NodeProcess) -> None:
    async def session(index: int) -> list[dict[str, object]]:
        async with await node.connect() as client:
            first = await client.request({**INIT, "msg_id": index * 10})
            second = await client.request({"type": "no_such_type", "msg_id": index * 10 + 1})
            return [first, second]

    results = await asyncio.gather(*(session(i) for i in range(100)))
    for index, (first, second) in enumerate(results):
        assert (first["type"], first["in_reply_to"]) == ("init_ok", index * 10)
        assert (second["code"], second["in_reply_to"]) == (10, index * 10 + 1)
    msg_ids = sorted(reply["msg_id"] for pair in results for reply in pair)
    assert msg_ids == list(range(200))


async def test_a_client_that_half_closes_still_gets_its_replies(node: NodeProcess) -> None:
    sock = socket.create_connection((node.host, node.port), timeout=10)
    with sock:
        sock.sendall(b"".join(orjson.dumps({**INIT, "msg_id": i}) + b"\n" for i in range(3)))
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    replies = [orjson.loads(line) for line in received.splitlines()]
    assert [r["in_reply_to"] for r in replies] == [0, 1, 2]
    async with await node.connect() as client:
        await assert_still_serving(client)


async def test_reset_and_abandoned_connections_do_not_disturb_the_node(node: NodeProcess) -> None:
    for _ in range(20):
        sock = socket.create_connection((node.host, node.port), timeout=10)
        sock.sendall(b'{"type": "init", "node_id": "n1", "node_ids": []}\n{"type": "in')
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST, with a reply possibly still on its way
    async with await node.connect() as client:
        await assert_still_serving(client)
    assert node.process is not None and node.process.poll() is None


async def test_a_client_that_never_reads_cannot_grow_the_node_memory(node: NodeProcess) -> None:
    line = orjson.dumps({"type": "mv_read", "msg_id": 1, "key": "k" * 40}) + b"\n"
    chunk = line * (256 * 1024 // len(line))
    limit_bytes = 100 << 20
    rss_before = node.rss_bytes()

    sock = socket.create_connection((node.host, node.port))
    sock.setblocking(False)
    sent = 0
    try:
        # Send until the node stops reading: the socket stays unwritable for a while.
        while sent < limit_bytes:
            _, writable, _ = select.select([], [sock], [], 1.5)
            if not writable:
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                continue
        blocked = sent < limit_bytes
        rss_during = node.rss_bytes()

        async with await node.connect() as fresh:
            started = time.monotonic()
            await assert_still_serving(fresh)
            assert time.monotonic() - started < 5
    finally:
        sock.close()

    assert blocked, f"the node read {sent} bytes from a client that never reads"
    growth = rss_during - rss_before
    assert growth < 64 << 20, f"RSS grew by {growth >> 20} MiB after {sent >> 20} MiB sent"
