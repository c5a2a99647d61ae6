"""replica: a replicated, always-writable key-value server.

Concurrent writes are never silently lost: they come back as siblings that the
client resolves.  The package is a pure core of data types (`replica.crdt`)
under an imperative shell (transport, node routing, configuration, CLI).
"""

__version__ = "0.1.0"
