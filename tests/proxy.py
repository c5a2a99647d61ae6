"""The link proxies live in the public kit, `replica.testing.proxy`; re-exported here."""

from replica.testing.proxy import Link, LinkProxy, Partitioner

__all__ = ["Link", "LinkProxy", "Partitioner"]
