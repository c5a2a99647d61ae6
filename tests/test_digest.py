"""Anti-entropy digests: equal states hash equal, any divergence is located."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replica.replication.digest import (
    BUCKETS,
    KeyspaceDigest,
    bucket_of,
    compare_keys,
    differing_buckets,
)

states = st.dictionaries(st.text(max_size=6), st.binary(max_size=8), max_size=30)


def digest_of(store: dict[str, bytes]) -> KeyspaceDigest:
    digest = KeyspaceDigest(store.get)
    for key in store:
        digest.changed(key)
    return digest


@given(states)
def test_equal_stores_have_equal_roots_whatever_the_history(store: dict[str, bytes]) -> None:
    churned = {key: b"stale" for key in store} | {"gone": b"x"}
    digest = KeyspaceDigest(churned.get)
    for key in churned:
        digest.changed(key)
    digest.root()  # hash the stale states first
    churned.clear()
    churned.update(store)
    for key in [*store, "gone"]:
        digest.changed(key)
    assert digest.root() == digest_of(store).root()
    assert digest.buckets() == digest_of(store).buckets()


@given(states, st.text(max_size=6), st.binary(max_size=8))
def test_a_changed_key_shows_in_its_bucket_and_nowhere_else(
    store: dict[str, bytes], key: str, state: bytes
) -> None:
    changed = store | {key: state + b"!"}
    mine, theirs = digest_of(store), digest_of(changed)
    assert mine.root() != theirs.root()
    assert differing_buckets(mine.buckets(), theirs.buckets()) == [bucket_of(key)]
    push, pull = compare_keys(mine.keys_in([bucket_of(key)]), theirs.keys_in([bucket_of(key)]))
    assert pull == [key]
    assert push == ([key] if key in store else [])


def test_a_short_or_garbled_bucket_list_differs_where_it_is_wrong() -> None:
    mine = [0] * BUCKETS
    assert differing_buckets(mine, [0] * 10) == list(range(10, BUCKETS))
    assert differing_buckets(mine, ["x"] + [0] * (BUCKETS - 1)) == [0]


@given(states, st.integers(min_value=0, max_value=40))
def test_a_bounded_refresh_rehashes_that_many_keys_and_never_loses_one(
    store: dict[str, bytes], limit: int
) -> None:
    digest = KeyspaceDigest(store.get)
    for key in store:
        digest.changed(key)
    digest.refresh(limit)
    assert digest.dirty == max(0, len(store) - limit)
    assert digest.root() == digest_of(store).root()  # asking for a root finishes the rest
    assert digest.dirty == 0
