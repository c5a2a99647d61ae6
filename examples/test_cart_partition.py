"""A cart written on both sides of a partition keeps both writes until a context resolves them.

Shows: `partitioned` (cut for the body, healed on exit), the MV register's
siblings after the heal, `eventually` instead of a sleep, and a write that
hands back the context its read returned, which supersedes exactly the
siblings that read showed.
"""

import pytest

from replica.testing import eventually

pytestmark = pytest.mark.asyncio


async def test_both_sides_of_a_partition_keep_their_write_until_a_context_resolves_them(
    replica_cluster,
):
    cluster = await replica_cluster(n=3)
    left, middle, right = [await cluster.client(n) for n in ("n1", "n2", "n3")]

    async with cluster.partitioned([["n1"], ["n2", "n3"]]):
        await left.mv_write("cart", ["milk"])
        await right.mv_write("cart", ["eggs"])
        # While cut off, n2 sees only its own side's write.
        only_eggs = await eventually(
            lambda: middle.mv_read("cart"), lambda r: len(r["values"]) == 1, "eggs at n2"
        )
        assert only_eggs["values"][0]["value"] == ["eggs"]

    # Healed: both writes reach n2 as siblings, neither having seen the other.
    both = await eventually(
        lambda: middle.mv_read("cart"), lambda r: len(r["values"]) == 2, "both siblings at n2"
    )
    assert sorted(s["value"] for s in both["values"]) == [["eggs"], ["milk"]]

    # The application merges them and writes the result with the read's context.
    await middle.mv_write("cart", ["eggs", "milk"], context=both["context"])
    await cluster.converged(reads=[{"type": "mv_read", "key": "cart"}])
    for node in cluster.node_ids:
        final = await (await cluster.client(node)).mv_read("cart")
        assert [s["value"] for s in final["values"]] == [["eggs", "milk"]]
