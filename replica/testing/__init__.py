"""The testing kit: real `replica serve` processes, fault proxies, clients, waiting, histories.

Everything here drives the nodes as a user could (processes, signals,
sockets, the CLI and its cluster file), so a scenario written with it tests
the server a user runs.  `replica.testing.plugin` offers the same as pytest
fixtures; docs/testing.md is the guide.
"""

from replica.testing.client import JsonClient, ReplicaError, without_ids
from replica.testing.cluster import Cluster, ProxiedCluster, cluster, proxied_cluster
from replica.testing.cluster_file import write_cluster, write_cluster_view
from replica.testing.history import FinalRead, History, Report, check, final_read_requests
from replica.testing.nemesis import Nemesis
from replica.testing.ports import LOOPBACK, free_listen_ports, free_ports
from replica.testing.process import NodeProcess, helper_pids, replica_command, wait_unlocked
from replica.testing.proxy import Direction, LinkProxy, Partitioner, Tap
from replica.testing.recording import (
    RecordingClient,
    final_reads,
    recording_client,
    recording_clients,
)
from replica.testing.shapes import SHAPES, Cut, Link, ShapeFunction
from replica.testing.waiting import converged, eventually

__all__ = [
    "LOOPBACK",
    "SHAPES",
    "Cluster",
    "Cut",
    "Direction",
    "FinalRead",
    "History",
    "JsonClient",
    "Link",
    "LinkProxy",
    "Nemesis",
    "NodeProcess",
    "Partitioner",
    "ProxiedCluster",
    "RecordingClient",
    "ReplicaError",
    "Report",
    "ShapeFunction",
    "Tap",
    "check",
    "cluster",
    "converged",
    "eventually",
    "final_read_requests",
    "final_reads",
    "free_listen_ports",
    "free_ports",
    "helper_pids",
    "proxied_cluster",
    "recording_client",
    "recording_clients",
    "replica_command",
    "wait_unlocked",
    "without_ids",
    "write_cluster",
    "write_cluster_view",
]
