"""Secret files: the cluster secret and the client password, kept from other users.

Contract: `read_secret` returns a file's content, trailing whitespace
dropped, or raises `ConfigError` naming the file when it is missing, empty,
not a regular file, or readable or writable by group or others (a secret
others can read proves nothing).  `write_secret` creates a new random one
with mode 0600 from its creation and never overwrites.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from replica.cli.config_fields import ConfigError

SECRET_BYTES = 32


def read_secret(path: str | Path, what: str = "secret file") -> bytes:
    """The secret in the file at `path`; ConfigError naming it (see the module's contract)."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path}: not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o066:
            raise ConfigError(
                f"{what} {path}: readable or writable by group or others "
                f"(mode {mode:04o}); run chmod 600 {path}"
            )
        with open(path, "rb") as file:
            secret = file.read().rstrip()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(f"{what} {path}: empty")
    return secret


def write_secret(path: str | Path) -> None:
    """A new random secret (32 bytes, hex, newline) at `path`, mode 0600 from its creation.

    FileExistsError if `path` exists: a secret is never overwritten.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(secrets.token_hex(SECRET_BYTES) + "\n")
