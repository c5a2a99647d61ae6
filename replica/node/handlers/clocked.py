"""What the timestamped types (LWW, MVCC) share: a client's timestamp checked against the clock."""

from __future__ import annotations

from replica.errors import ErrorCode, RequestError
from replica.keyspaces import Keyspaces, TooFarAhead


def too_far_ahead(keyspaces: Keyspaces, exc: TooFarAhead) -> RequestError:
    skew = keyspaces.max_clock_skew_ms
    return RequestError(
        ErrorCode.PRECONDITION_FAILED,
        f"timestamp {exc.timestamp} is more than max_clock_skew_ms ({skew}) ahead of "
        f"this node's hybrid clock: the largest it accepts now is {exc.bound}",
    )
