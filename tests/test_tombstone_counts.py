"""The keyspaces' tombstone counts (`status`'s `tombstones`): kept on every change, never scanned.

Three replicas write, delete and exchange states by merge and by load; after
every step each replica's counts must equal a scan of its keys, and a
recovery (`load_many`) must count what the replica kept.
"""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from replica.crdt.mvcc import TimestampConflict
from replica.crdt.registry import BY_NAME, TYPES
from replica.keyspaces import Keyspaces
from replica.node.handlers import kv as kv_ops
from replica.node.handlers import lww as lww_ops
from replica.node.handlers import mv as mv_ops
from replica.node.handlers import mvcc as mvcc_ops

DELETABLE = [t.name for t in TYPES if t.holds_tombstone is not None]

steps = st.lists(
    st.tuples(
        st.sampled_from(["write", "delete", "merge", "load"]),
        st.sampled_from(DELETABLE),
        st.integers(0, 2),  # the replica
        st.integers(0, 2),  # the key
        st.integers(1, 4),  # a timestamp step or a clock entry
    ),
    max_size=50,
)


def scan(keyspaces: Keyspaces) -> dict[str, int]:
    counts = {}
    for name in DELETABLE:
        holds = BY_NAME[name].holds_tombstone
        assert holds is not None
        counts[name] = sum(1 for state in keyspaces.states[name].values() if holds(state))
    return counts


def apply(here: Keyspaces, there: Keyspaces, kind: str, name: str, key: str, n: int) -> None:
    if kind == "merge":
        if key in there.states[name]:
            here.merge(BY_NAME[name], key, there.states[name][key])
    elif kind == "load":
        if key in there.states[name]:
            here.load(name, key, there.states[name][key])
    elif name == "mv":
        current = here.states["mv"].get(key)
        if kind == "write":
            mv_ops.write(here, key, n, None if n % 2 else {})
        elif current is not None:
            mv_ops.delete(here, key, current.context())
    elif name == "kv":
        clock = (n, 4 - n)
        if kind == "write":
            kv_ops.put(here, key, n, clock)
        else:
            kv_ops.delete(here, key, clock)
    elif name == "lww":
        if kind == "write":
            lww_ops.write(here, key, n, n)
        else:
            lww_ops.delete(here, key, n)
    else:
        with contextlib.suppress(TimestampConflict):
            if kind == "write":
                mvcc_ops.put(here, key, n, None)
            else:
                mvcc_ops.delete(here, key, None)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_tombstone_counts_match_a_scan_through_writes_deletes_merges_and_loads(ops) -> None:
    replicas = [Keyspaces(f"n{i}", mvcc_retention_ms=0) for i in range(3)]
    for kind, name, at, key_index, n in ops:
        apply(replicas[at], replicas[(at + 1) % 3], kind, name, f"k{key_index}", n)
        for replica in replicas:
            assert replica.tombstones() == scan(replica)
    for replica in replicas:
        recovered = Keyspaces(replica.node_id, mvcc_retention_ms=0)
        recovered.load_many(
            (name, key, state) for name in DELETABLE for key, state in replica.states[name].items()
        )
        assert recovered.tombstones() == replica.tombstones()


def test_a_delete_counts_one_tombstone_and_a_write_over_it_takes_it_away() -> None:
    here = Keyspaces("n1", mvcc_retention_ms=0)
    mv_ops.write(here, "k", "a", None)
    register = mv_ops.delete(here, "k", here.states["mv"]["k"].context())
    assert here.tombstones() == {"mv": 1, "kv": 0, "mvcc": 0, "lww": 0}
    mv_ops.write(here, "k", "b", register.context())
    assert here.tombstones() == {"mv": 0, "kv": 0, "mvcc": 0, "lww": 0}
