"""Certificates for a test cluster: one CA, and one certificate per node naming its id.

Contract: `mint(directory, node_ids, foreign=...)` writes `ca.pem` and, for
each node, `<id>.pem` (its certificate chain) and `<id>.key`; a certificate
names the node id, "localhost" and 127.0.0.1 in its subjectAltName and is
signed by the CA.  The nodes named in `foreign` get theirs from a second CA,
written to `foreign-ca.pem`, and trust only that one: a node outside the
cluster's CA, for tests of what it may do.  Returns each node's `[tls]`
table, file names relative to `directory`, as the cluster files name them.
Minting needs trustme (the `testing` extra), imported only when called.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from replica.testing.ports import LOOPBACK

CA_FILE = "ca.pem"
FOREIGN_CA_FILE = "foreign-ca.pem"


def mint(
    directory: Path, node_ids: Iterable[str], foreign: Iterable[str] = ()
) -> dict[str, dict[str, str]]:
    """Write the CA files and every node's certificate and key; each node's `[tls]` table."""
    import trustme

    ids = list(node_ids)
    outsiders = set(foreign)
    authorities = {CA_FILE: trustme.CA()}
    if outsiders:
        authorities[FOREIGN_CA_FILE] = trustme.CA()
    for name, authority in authorities.items():
        authority.cert_pem.write_to_path(str(directory / name))
    tables = {}
    for node_id in ids:
        ca_file = FOREIGN_CA_FILE if node_id in outsiders else CA_FILE
        leaf = authorities[ca_file].issue_cert(node_id, "localhost", LOOPBACK)
        cert_file, key_file = f"{node_id}.pem", f"{node_id}.key"
        with (directory / cert_file).open("wb") as file:
            for blob in leaf.cert_chain_pems:
                file.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(directory / key_file))
        tables[node_id] = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    return tables
