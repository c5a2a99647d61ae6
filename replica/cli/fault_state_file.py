"""Where a running `cluster up --faults` serves its fault control endpoint.

The file is `.NAME.faults` beside the cluster file `NAME` (`.cluster.toml.faults`
beside `cluster.toml`): JSON `{"pid", "host", "port", "token", "config"}`,
mode 0600, written when the endpoint listens and removed when it stops.  So
`replica fault --config FILE` and `replica status --config FILE` find the
endpoint from the cluster file alone, with nothing to pass by hand, and only
the file's owner can read the token every request must carry (the endpoint
listens on loopback, where every local user could reach it).  A file whose
pid is gone was left by a supervisor that was killed outright: readers say so
and ignore it, and the next `cluster up --faults` replaces it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import orjson


class NoFaultEndpoint(Exception):
    """No running `cluster up --faults` for this cluster file; `str()` says why, in one line."""


@dataclass(frozen=True, slots=True)
class FaultEndpoint:
    pid: int
    host: str
    port: int
    token: str


def state_file_path(config_path: str | Path) -> Path:
    """`.NAME.faults` beside the cluster file NAME (a symbolic link followed to its file)."""
    path = Path(config_path).resolve()
    return path.with_name(f".{path.name}.faults")


def write_state_file(config_path: str | Path, endpoint: FaultEndpoint) -> Path:
    """Write the file, mode 0600, replacing any other whole; OSError when it cannot."""
    path = state_file_path(config_path)
    body = {
        "pid": endpoint.pid,
        "host": endpoint.host,
        "port": endpoint.port,
        "token": endpoint.token,
        "config": str(Path(config_path).resolve()),
    }
    temporary = path.with_name(f"{path.name}.{endpoint.pid}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, orjson.dumps(body) + b"\n")
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return path


def remove_state_file(config_path: str | Path, pid: int) -> None:
    """Remove the file if it is still `pid`'s (a later supervisor may have replaced it)."""
    path = state_file_path(config_path)
    with contextlib.suppress(OSError, NoFaultEndpoint):
        if _read(path).pid == pid:
            path.unlink()


def running_endpoint(config_path: str | Path) -> FaultEndpoint | None:
    """The endpoint of a running supervisor for this file, or None when there is none."""
    try:
        return read_state_file(config_path)
    except NoFaultEndpoint:
        return None


def read_state_file(config_path: str | Path) -> FaultEndpoint:
    """The endpoint of the supervisor that wrote the file; NoFaultEndpoint when there is none."""
    path = state_file_path(config_path)
    if not path.exists():
        raise NoFaultEndpoint(
            f"no running `replica cluster up --faults` for {config_path} ({path} does not exist)"
        )
    endpoint = _read(path)
    if not _alive(endpoint.pid):
        raise NoFaultEndpoint(
            f"stale {path} ignored: its `cluster up --faults` (pid {endpoint.pid}) is gone"
        )
    return endpoint


def _read(path: Path) -> FaultEndpoint:
    try:
        body = orjson.loads(path.read_bytes())
        return FaultEndpoint(
            pid=int(body["pid"]),
            host=str(body["host"]),
            port=int(body["port"]),
            token=str(body["token"]),
        )
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise NoFaultEndpoint(f"unreadable {path} ignored ({type(exc).__name__})") from None


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a zombie (killed, not yet reaped) has stopped serving."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process reuses the pid: the connection will tell
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    return True
