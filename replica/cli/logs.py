"""Log lines on stderr, each naming the node that wrote it.

stdout may carry protocol messages (stdio mode), so logs never go there.  In
stdio mode the node learns its id from `init`, so the id is looked up when a
line is written rather than fixed when logging is set up.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s.%(msecs)03d %(node)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


class _NodeLabel(logging.Filter):
    def __init__(self, label: Callable[[], str | None]) -> None:
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.label() or "-"
        return True


def configure_logging(level: str, label: str | Callable[[], str | None]) -> None:
    """Send every log record to stderr at `level`, prefixed with the node's label."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    handler.addFilter(_NodeLabel(label if callable(label) else lambda: label))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
