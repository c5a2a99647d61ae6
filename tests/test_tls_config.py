"""`[tls]` in the cluster file: paths, a node's own certificate, protected mode, bad files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from replica.cli.config import ConfigError, parse_cluster
from replica.testing.certificates import mint
from replica.transports.tls import TlsFiles, node_contexts

BASE = Path("/etc/replica")


def document(tls: dict[str, Any] | None, **node: Any) -> dict[str, Any]:
    nodes = [{"id": "n1", "host": "0.0.0.0", "port": 7001, **node}]
    nodes.append({"id": "n2", "host": "0.0.0.0", "port": 7002})
    return {"nodes": nodes} | ({} if tls is None else {"tls": tls})


def test_paths_are_relative_to_the_file_and_a_node_may_name_its_own_certificate() -> None:
    tls = {"ca_file": "ca.pem", "cert_file": "node.pem", "key_file": "node.key"}
    config = parse_cluster(document(tls, tls_cert_file="n1.pem", tls_key_file="n1.key"), BASE)
    n1, n2 = config.nodes
    assert config.tls_files(n1) == TlsFiles(BASE / "ca.pem", BASE / "n1.pem", BASE / "n1.key")
    assert config.tls_files(n2) == TlsFiles(BASE / "ca.pem", BASE / "node.pem", BASE / "node.key")


def test_tls_satisfies_protected_mode() -> None:
    plain = parse_cluster(document(None), BASE)
    assert plain.protected_mode_refusal(plain.nodes[0], None) is not None
    config = parse_cluster(document({"ca_file": "ca.pem", "cert_file": "n.pem"}), BASE)
    assert config.protected_mode_refusal(config.nodes[0], None) is None


@pytest.mark.parametrize(
    ("tls", "node", "expected"),
    [
        ({"cert_file": "n.pem"}, {}, "[tls]: missing field 'ca_file'"),
        ({"ca_file": "ca.pem"}, {}, "no certificate ([tls] cert_file or tls_cert_file)"),
        ({"ca_file": "ca.pem", "cert": "n.pem"}, {}, "[tls]: unknown field 'cert'"),
        ({"ca_file": "", "cert_file": "n.pem"}, {}, "ca_file must be a non-empty string"),
        (None, {"tls_cert_file": "n1.pem"}, "tls_cert_file or tls_key_file needs [tls]"),
    ],
)
def test_an_incomplete_tls_table_is_refused(
    tls: dict[str, Any] | None, node: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_cluster(document(tls, **node), BASE)
    assert expected in str(caught.value)


def test_node_contexts_name_the_file_they_cannot_use(tmp_path: Path) -> None:
    tables = mint(tmp_path, ["n1"])
    good = TlsFiles(
        *(tmp_path / tables["n1"][name] for name in ("ca_file", "cert_file", "key_file"))
    )
    assert node_contexts(good).server is not None
    missing = TlsFiles(tmp_path / "nowhere.pem", good.cert_file, good.key_file)
    with pytest.raises(ValueError, match=r"ca_file .*nowhere\.pem: cannot read"):
        node_contexts(missing)
    assert good.key_file is not None
    not_a_cert = TlsFiles(good.ca_file, good.key_file, good.key_file)
    with pytest.raises(ValueError, match=r"cert_file .*n1\.key"):
        node_contexts(not_a_cert)
    other = tmp_path / "other"
    other.mkdir()
    mint(other, ["n9"])
    with pytest.raises(ValueError, match="not a certificate and its key"):
        node_contexts(TlsFiles(good.ca_file, good.cert_file, other / "n9.key"))
