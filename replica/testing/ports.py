"""Free loopback ports for nodes, proxies and RESP listeners.

Contract: the ports returned were free a moment ago and are distinct; nothing
reserves them, so use them at once.  `free_listen_ports` picks them below the
kernel's ephemeral range, for listeners that must bind the same port again.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
DEFAULT_EPHEMERAL_LOW = 32768


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in socks]


def free_listen_ports(count: int) -> list[int]:
    """`count` free loopback ports below the kernel's ephemeral range.

    A proxy that is cut closes its listening socket and must bind the same
    port again when it heals; a port from the ephemeral range could meanwhile
    become the local end of some outgoing connection and make that bind fail.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = DEFAULT_EPHEMERAL_LOW
    rng = random.Random()
    ports: list[int] = []
    attempts = 0
    while len(ports) < count:
        attempts += 1
        if attempts > 10_000:
            raise RuntimeError(f"no {count} free ports below {low}")
        port = rng.randrange(10_000, low)
        if port in ports:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
        ports.append(port)
    return ports
