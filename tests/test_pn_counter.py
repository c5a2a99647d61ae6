"""The PN-counter: its core, its handlers on one node, and `PNCOUNT` through redis-py.

The merge laws and convergence to the sum of all additions are in
tests/test_merge_laws.py; three real nodes through a partition and a kill -9
are in tests/test_counter_cluster.py.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from replica.crdt.malformed import Malformed
from replica.crdt.pn_counter import MAX_TOTAL, PNCounter, TotalTooLarge
from replica.node.router import Node
from replica.session import trusted
from replica.transports.resp import serve_resp
from tests.harness import LOOPBACK


def call(node: Node, **body: Any) -> dict[str, Any]:
    reply = node.handle_line(orjson.dumps(body), trusted())
    assert reply is not None
    decoded: dict[str, Any] = orjson.loads(reply)
    return decoded


# -- the core ------------------------------------------------------------------------------


def test_the_value_is_what_every_actor_added_less_what_it_took_away() -> None:
    counter = PNCounter().add("a", 5).add("b", 3).add("a", -2).add("b", -10)
    assert counter.value == -4
    assert counter.to_wire() == {"p": {"a": 5, "b": 3}, "n": {"a": 2, "b": 10}}


def test_merge_keeps_each_actors_larger_totals() -> None:
    left = PNCounter().add("a", 5).add("b", -1)
    right = PNCounter().add("a", 2).add("c", 7)
    merged = left.merge(right)
    assert merged.to_wire() == {"p": {"a": 5, "c": 7}, "n": {"b": 1}}
    assert merged == right.merge(left)


def test_adding_zero_is_no_change() -> None:
    counter = PNCounter().add("a", 1)
    assert counter.add("a", 0) is counter


def test_an_actors_total_past_the_bound_is_refused_and_changes_nothing() -> None:
    counter = PNCounter().add("a", MAX_TOTAL)
    with pytest.raises(TotalTooLarge):
        counter.add("a", 1)
    assert counter.value == MAX_TOTAL
    assert counter.add("a", -MAX_TOTAL).value == 0


@pytest.mark.parametrize(
    "raw",
    [
        [],
        {"p": []},
        {"p": {"a": -1}},
        {"p": {"a": 1.5}},
        {"n": {"a": True}},
        {"p": {"a": MAX_TOTAL + 1}},
    ],
)
def test_a_malformed_state_from_a_peer_is_refused(raw: Any) -> None:
    with pytest.raises(Malformed):
        PNCounter.from_wire(raw)


def test_zero_totals_from_a_peer_are_dropped_so_equal_counters_are_equal() -> None:
    assert PNCounter.from_wire({"p": {"a": 0, "b": 2}}) == PNCounter.from_wire({"p": {"b": 2}})


def test_the_stored_form_reads_back_and_a_wrong_shape_is_refused() -> None:
    counter = PNCounter().add("a", 4).add("b", -9)
    assert PNCounter.from_stored(counter.to_stored()) == counter
    with pytest.raises(TypeError):
        PNCounter.from_stored({"p": {"a": "4"}, "n": {}})


# -- one node ------------------------------------------------------------------------------


def test_counter_add_answers_the_total_and_counter_read_reads_it() -> None:
    node = Node("n1", ["n1"])
    assert call(node, type="counter_read", key="c", msg_id=1)["value"] == 0
    assert call(node, type="counter_add", key="c", delta=10)["value"] == 10
    assert call(node, type="counter_add", key="c", delta=-15)["value"] == -5
    reply = call(node, type="counter_read", key="c", msg_id=7)
    assert reply["type"] == "counter_read_ok" and reply["value"] == -5 and reply["in_reply_to"] == 7


@pytest.mark.parametrize(
    "fields",
    [{}, {"key": "c"}, {"key": "c", "delta": "1"}, {"key": "c", "delta": 1.0},
     {"key": "c", "delta": True}, {"key": "c", "delta": MAX_TOTAL + 1}, {"key": 1, "delta": 1}],
)  # fmt: skip
def test_a_bad_counter_add_gets_error_12_and_changes_nothing(fields: dict[str, Any]) -> None:
    node = Node("n1", ["n1"])
    reply = call(node, type="counter_add", **fields)
    assert reply["type"] == "error" and reply["code"] == 12, reply
    assert node.keyspaces.states["counter"] == {}


def test_an_addition_past_the_bound_gets_error_22() -> None:
    node = Node("n1", ["n1"])
    call(node, type="counter_add", key="c", delta=MAX_TOTAL)
    reply = call(node, type="counter_add", key="c", delta=1)
    assert reply["type"] == "error" and reply["code"] == 22, reply
    assert call(node, type="counter_read", key="c")["value"] == MAX_TOTAL


def test_a_peers_counter_merges_and_appears_in_status() -> None:
    node = Node("n1", ["n1", "n2"])
    call(node, type="counter_add", key="c", delta=3)
    merge = {"type": "counter_merge", "msg_id": 4, "deltas": [
        {"key": "c", "state": {"p": {"n2~x": 10}, "n": {"n2~x": 1}}},
        {"key": "bad", "state": {"p": {"n2~x": -1}}}]}  # fmt: skip
    ack = call(node, src="n2", dest="n1", body=merge)["body"]
    assert ack["type"] == "counter_merge_ok" and ack["in_reply_to"] == 4
    assert call(node, type="counter_read", key="c")["value"] == 12
    status = call(node, type="status")
    assert status["keys"]["counter"] == 1
    assert status["peers"][0]["refused_merges"] == 1


# -- the Redis port ------------------------------------------------------------------------


async def test_pncount_inc_dec_get_through_redis_py() -> None:
    node = Node("n1", ["n1"])
    server = await serve_resp(node, LOOPBACK, 0)
    client = aioredis.Redis(host=LOOPBACK, port=server.addresses[0][1], protocol=2)
    try:
        assert await client.execute_command("PNCOUNT", "GET", "hits") == 0
        assert await client.execute_command("PNCOUNT", "INC", "hits") == b"OK"
        assert await client.execute_command("PNCOUNT", "INC", "hits", 41) == b"OK"
        assert await client.execute_command("PNCOUNT", "DEC", "hits", 50) == b"OK"
        assert await client.execute_command("PNCOUNT", "GET", "hits") == -8
        for bad in (["INC", "hits", "x"], ["INC", "hits", -1], ["GET"], ["INC"], ["SUB", "k"]):
            with pytest.raises(ResponseError):
                await client.execute_command("PNCOUNT", *bad)
        assert await client.execute_command("pncount", "get", "hits") == -8
    finally:
        await client.aclose()
        await server.close()
    assert call(node, type="counter_read", key="hits")["value"] == -8


def test_a_reset_takes_away_what_it_observed_and_a_concurrent_addition_survives() -> None:
    seen = PNCounter().add("n1", 7).add("n2", -2)
    reset = seen.reset("n1")
    assert reset.value == 0
    concurrent = seen.add("n3", 4)
    assert reset.merge(concurrent).value == concurrent.merge(reset).value == 4
    assert PNCounter().reset("n1") == PNCounter()
