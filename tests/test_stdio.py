"""`replica stdio`: the seeds' sample sessions, replayed through a real child process."""

from __future__ import annotations

import subprocess
from typing import Any

import orjson
import pytest

from tests.harness import replica_command

INIT_N1 = (
    b'{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}'
)
INIT_N1_N2 = (
    b'{"src":"c0","dest":"n1","body":'
    b'{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1","n2"]}}'
)
INIT_OK = {"src": "n1", "dest": "c0", "body": {"type": "init_ok", "in_reply_to": 1, "msg_id": 0}}

V1 = {"value": "v1", "vclock": {"n1": 1}, "dot": ["n1", 1]}
V2_FROM_N2 = {"value": "v2", "vclock": {"n2": 1}, "dot": ["n2", 1]}


def reply(dest: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"src": "n1", "dest": dest, "body": body}


SESSIONS: dict[str, tuple[list[bytes], list[dict[str, Any]]]] = {
    "seed000-write-and-read": (
        [
            INIT_N1,
            b'{"src":"c1","dest":"n1","body":{"type":"mv_write","msg_id":2,"key":"k","value":"v1"}}',
            b'{"src":"c1","dest":"n1","body":{"type":"mv_read","msg_id":3,"key":"k"}}',
        ],
        [
            INIT_OK,
            reply(
                "c1",
                {
                    "type": "mv_write_ok",
                    "in_reply_to": 2,
                    "msg_id": 1,
                    "vclock": {"n1": 1},
                    "context": {"n1": 1},
                    "values": [V1],
                },
            ),
            reply(
                "c1",
                {
                    "type": "mv_read_ok",
                    "in_reply_to": 3,
                    "msg_id": 2,
                    "values": [V1],
                    "context": {"n1": 1},
                },
            ),
        ],
    ),
    "seed000-concurrent-writes": (
        [
            INIT_N1_N2,
            b'{"src":"c1","dest":"n1","body":{"type":"mv_write","msg_id":2,"key":"k","value":"v1"}}',
            b'{"src":"n2","dest":"n1","body":{"type":"mv_merge","msg_id":3,"key":"k",'
            b'"entry":{"value":"v2","vclock":{"n2":1}}}}',
            b'{"src":"c1","dest":"n1","body":{"type":"mv_read","msg_id":4,"key":"k"}}',
        ],
        [
            INIT_OK,
            reply(
                "c1",
                {
                    "type": "mv_write_ok",
                    "in_reply_to": 2,
                    "msg_id": 1,
                    "vclock": {"n1": 1},
                    "context": {"n1": 1},
                    "values": [V1],
                },
            ),
            reply("n2", {"type": "mv_merge_ok", "in_reply_to": 3, "msg_id": 2}),
            reply(
                "c1",
                {
                    "type": "mv_read_ok",
                    "in_reply_to": 4,
                    "msg_id": 3,
                    "values": [V1, V2_FROM_N2],
                    "context": {"n1": 1, "n2": 1},
                },
            ),
        ],
    ),
    "seed001-simple-write": (
        [
            INIT_N1,
            b'{"src":"c1","dest":"n1","body":{"type":"kv_put","msg_id":2,"key":"x","value":"hello",'
            b'"clock":[1,0]}}',
            b'{"src":"c1","dest":"n1","body":{"type":"kv_get","msg_id":3,"key":"x"}}',
        ],
        [
            INIT_OK,
            reply("c1", {"type": "kv_put_ok", "in_reply_to": 2, "status": "written", "msg_id": 1}),
            reply(
                "c1",
                {
                    "type": "kv_get_ok",
                    "in_reply_to": 3,
                    "msg_id": 2,
                    "values": [{"value": "hello", "clock": [1, 0]}],
                },
            ),
        ],
    ),
    "seed001-concurrent-writes": (
        [
            INIT_N1,
            b'{"src":"c1","dest":"n1","body":{"type":"kv_put","msg_id":2,"key":"x","value":"v1",'
            b'"clock":[1,0]}}',
            b'{"src":"c1","dest":"n1","body":{"type":"kv_put","msg_id":3,"key":"x","value":"v2",'
            b'"clock":[0,1]}}',
            b'{"src":"c1","dest":"n1","body":{"type":"kv_get","msg_id":4,"key":"x"}}',
        ],
        [
            INIT_OK,
            reply("c1", {"type": "kv_put_ok", "in_reply_to": 2, "status": "written", "msg_id": 1}),
            reply(
                "c1",
                {
                    "type": "kv_put_ok",
                    "in_reply_to": 3,
                    "status": "conflict",
                    "siblings": 2,
                    "msg_id": 2,
                },
            ),
            reply(
                "c1",
                {
                    "type": "kv_get_ok",
                    "in_reply_to": 4,
                    "msg_id": 3,
                    "values": [{"value": "v1", "clock": [1, 0]}, {"value": "v2", "clock": [0, 1]}],
                },
            ),
        ],
    ),
}

MVCC_INPUT = [
    INIT_N1,
    b'{"src":"c1","dest":"n1","body":{"type":"mvcc_put","msg_id":2,"key":"x","value":"old",'
    b'"timestamp":100}}',
    b'{"src":"c1","dest":"n1","body":{"type":"mvcc_put","msg_id":3,"key":"x","value":"new",'
    b'"timestamp":200}}',
]
MVCC_PUTS = [
    INIT_OK,
    reply(
        "c1", {"type": "mvcc_put_ok", "in_reply_to": 2, "version": 1, "timestamp": 100, "msg_id": 1}
    ),
    reply(
        "c1", {"type": "mvcc_put_ok", "in_reply_to": 3, "version": 2, "timestamp": 200, "msg_id": 2}
    ),
]
SESSIONS["seed003-read-at-old-timestamp"] = (
    [
        *MVCC_INPUT,
        b'{"src":"c1","dest":"n1","body":{"type":"mvcc_get","msg_id":4,"key":"x",'
        b'"read_timestamp":150}}',
    ],
    [
        *MVCC_PUTS,
        reply(
            "c1",
            {
                "type": "mvcc_get_ok",
                "in_reply_to": 4,
                "value": "old",
                "version": 1,
                "as_of_timestamp": 100,
                "msg_id": 3,
            },
        ),
    ],
)
SESSIONS["seed003-read-at-current-timestamp"] = (
    [
        *MVCC_INPUT,
        b'{"src":"c1","dest":"n1","body":{"type":"mvcc_get","msg_id":4,"key":"x",'
        b'"read_timestamp":300}}',
    ],
    [
        *MVCC_PUTS,
        reply(
            "c1",
            {
                "type": "mvcc_get_ok",
                "in_reply_to": 4,
                "value": "new",
                "version": 2,
                "as_of_timestamp": 200,
                "msg_id": 3,
            },
        ),
    ],
)


def run_stdio(stdin: bytes, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        replica_command("stdio", *args), input=stdin, capture_output=True, timeout=30
    )


def messages(stdout: bytes) -> list[Any]:
    """Every stdout line as JSON; a line that is not JSON fails the test."""
    return [orjson.loads(line) for line in stdout.splitlines()]


@pytest.mark.parametrize("name", SESSIONS)
def test_seed_session(name: str) -> None:
    lines, expected = SESSIONS[name]
    result = run_stdio(b"".join(line + b"\n" for line in lines))
    assert result.returncode == 0, result.stderr.decode()
    assert messages(result.stdout) == expected
    assert b"Traceback" not in result.stderr


def test_a_request_before_init_gets_error_11_and_init_still_works() -> None:
    result = run_stdio(
        b'{"src":"c1","dest":"n1","body":{"type":"mv_read","msg_id":1,"key":"k"}}\n'
        + INIT_N1
        + b"\n"
    )
    assert result.returncode == 0
    first, second = messages(result.stdout)
    assert first["dest"] == "c1"
    assert first["body"]["type"] == "error"
    assert first["body"]["code"] == 11
    assert first["body"]["in_reply_to"] == 1
    assert second == {
        "src": "n1",
        "dest": "c0",
        "body": {"type": "init_ok", "in_reply_to": 1, "msg_id": 1},
    }


def test_stdout_carries_only_messages_and_logs_go_to_stderr() -> None:
    result = run_stdio(
        INIT_N1 + b"\nnot json\n" + b'{"type":"frobnicate","msg_id":9}\n', "--log-level", "debug"
    )
    assert result.returncode == 0
    replies = messages(result.stdout)
    assert [r.get("body", r)["type"] for r in replies] == ["init_ok", "error", "error"]
    assert [r["code"] for r in replies[1:]] == [12, 10]
    log = result.stderr.decode()
    assert "n1 INFO replica.transports.stdio: initialised as n1; peers: none" in log
    assert "n1 DEBUG replica.transports.stdio: end of input" in log


def test_an_oversized_line_gets_error_12_and_the_next_line_is_served() -> None:
    too_long = b'{"type":"mv_read","msg_id":2,"key":"' + b"k" * 300 + b'"}'
    result = run_stdio(
        INIT_N1 + b"\n" + too_long + b"\n" + b'{"type":"frobnicate","msg_id":3}\n',
        "--max-line-bytes",
        "200",
    )
    assert result.returncode == 0
    replies = messages(result.stdout)
    assert replies[0] == INIT_OK
    assert (replies[1]["type"], replies[1]["code"]) == ("error", 12)
    assert "max_line_bytes" in replies[1]["text"]
    assert (replies[2]["code"], replies[2]["in_reply_to"]) == (10, 3)


def test_a_last_line_without_newline_is_answered() -> None:
    result = run_stdio(INIT_N1)
    assert result.returncode == 0
    assert messages(result.stdout) == [INIT_OK]


def test_empty_input_exits_0_silently() -> None:
    result = run_stdio(b"")
    assert result.returncode == 0
    assert result.stdout == b""


def test_input_from_a_regular_file(tmp_path: Any) -> None:
    path = tmp_path / "input.jsonl"
    path.write_bytes(INIT_N1 + b"\n")
    with path.open("rb") as stdin:
        result = subprocess.run(
            replica_command("stdio"), stdin=stdin, capture_output=True, timeout=30
        )
    assert result.returncode == 0
    assert messages(result.stdout) == [INIT_OK]


def test_stdio_takes_the_limits_and_quorum_defaults_as_flags() -> None:
    def request(msg_id: int, **body: Any) -> bytes:
        return orjson.dumps({"src": "c1", "dest": "n1", "body": {"msg_id": msg_id, **body}})

    lines = [
        INIT_N1,
        request(1, type="mv_write", key="k", value="x" * 20),
        request(2, type="mv_write", key="k", value="short"),
        request(3, type="mv_write", key="k", value="two", context={}),
    ]
    result = run_stdio(
        b"".join(line + b"\n" for line in lines), "--max-value-bytes", "16", "--max-siblings", "1"
    )
    assert result.returncode == 0, result.stderr.decode()
    _, too_big, written, refused = [m["body"] for m in messages(result.stdout)]
    assert too_big["type"] == "error" and too_big["code"] == 12, too_big
    assert written["type"] == "mv_write_ok"
    assert refused["type"] == "error" and refused["code"] == 22, refused
    bad = run_stdio(b"", "--w", "most")
    assert bad.returncode != 0 and b"--w" in bad.stderr
