"""The project's own tests use the public kit, `replica.testing`, like any user.

These names are re-exported so tests import them from one place.
"""

from replica.testing.client import REPLY_TIMEOUT, JsonClient, ReplicaError, without_ids
from replica.testing.cluster import ProxiedCluster, cluster, proxied_cluster
from replica.testing.cluster_file import write_cluster, write_cluster_view
from replica.testing.ports import LOOPBACK, free_listen_ports, free_ports
from replica.testing.process import (
    START_TIMEOUT,
    STOP_TIMEOUT,
    NodeProcess,
    helper_pids,
    node_ready,
    replica_command,
    running_cluster,
    wait_unlocked,
)
from replica.testing.waiting import CONVERGE_TIMEOUT, converged, eventually

__all__ = [
    "CONVERGE_TIMEOUT",
    "LOOPBACK",
    "REPLY_TIMEOUT",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "JsonClient",
    "NodeProcess",
    "ProxiedCluster",
    "ReplicaError",
    "cluster",
    "converged",
    "eventually",
    "free_listen_ports",
    "free_ports",
    "helper_pids",
    "node_ready",
    "proxied_cluster",
    "replica_command",
    "running_cluster",
    "wait_unlocked",
    "without_ids",
    "write_cluster",
    "write_cluster_view",
]
