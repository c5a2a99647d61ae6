"""The pure core: replicated data types with no I/O, no asyncio, no sockets.

Every type offers the same small contract: operations that return a new state,
a `merge` that is commutative, associative and idempotent, and wire encoders
that validate what they decode by raising `Malformed`.
"""
