"""Maelstrom's error codes and the exception a handler raises to answer with one.

A handler raises `RequestError` for a refusal the contract defines (absent key,
stale write, failed precondition) and lets `Malformed` escape for bad input;
the node turns both into an error reply.  1000 opens Maelstrom's range of
custom codes.  Everything else is a bug: error 13.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    TIMEOUT = 0
    """A quorum not reached in time: indefinite, the write is kept and spreads."""
    NOT_SUPPORTED = 10
    TEMPORARILY_UNAVAILABLE = 11
    MALFORMED_REQUEST = 12
    CRASH = 13
    KEY_DOES_NOT_EXIST = 20
    PRECONDITION_FAILED = 22
    TXN_CONFLICT = 30
    NOT_AUTHORISED = 1000
    """A peer-only message on a connection that has not proven cluster membership."""


class RequestError(Exception):
    """A request the contract refuses; the node replies with `code` and `text`."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
