"""The data types' keyspace names, as tests spell them (from the registry)."""

from replica.crdt import registry

MV, KV, MVCC, LWW = registry.MV.name, registry.KV.name, registry.MVCC.name, registry.LWW.name
