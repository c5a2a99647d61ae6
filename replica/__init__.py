"""replica: a replicated, always-writable key-value server.

Concurrent writes are never silently lost: they come back as siblings that the
client resolves.  The package is a pure core of data types (`replica.crdt`)
under an imperative shell (transport, node routing, configuration, CLI).
"""

# First, before any other module of ours loads: the compiled modules, or their sources
# when REPLICA_PURE_PYTHON=1 or a source changed since it was compiled (replica.build).
from replica import build as _build  # noqa: F401

__version__ = "0.1.0"
