"""`rsrt node start --secure`: TLS with the node's own CA, basic auth, least-privilege users.

The secure node is the session's (`secure_node` in conftest.py, shared with test_secure_paths.py); the
certificate and restart-reuse checks need no node.
"""

from __future__ import annotations

import json
import ssl
import stat
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import opensearchpy
import pytest

from rsrt.search._node.security import ADMIN, ADMIN_DN, DASHBOARDS, INGEST, NODE_DN, READER, SecurityFiles
from rsrt.search.errors import ClusterAuthError, from_opensearch


@pytest.mark.integration
def test_green_over_https_with_the_ca_verified_and_basic_auth(secure_node):
    assert secure_node.url.startswith("https://127.0.0.1:")
    client = secure_node.client(ADMIN)
    assert client.cluster.health()["status"] in {"green", "yellow"}
    state = secure_node.cluster.state()
    assert state.secure and state.ca_file == secure_node.ca_file and state.users == [ADMIN, DASHBOARDS, INGEST, READER]
    status = secure_node.outputs[1]
    assert "security:    on" in status and "rsrt-reader" in status and "status green" in status


@pytest.mark.integration
def test_no_credentials_get_401(secure_node):
    context = ssl.create_default_context(cafile=secure_node.ca_file)
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{secure_node.url}/_cluster/health", context=context, timeout=10)
    assert caught.value.code == 401


@pytest.mark.integration
def test_a_wrong_password_is_one_clear_line(secure_node):
    with pytest.raises(opensearchpy.OpenSearchException) as caught:
        secure_node.client(READER, "not-the-password").cluster.health()
    error = from_opensearch(caught.value)
    assert isinstance(error, ClusterAuthError)
    assert "401" in str(error) and "\n" not in str(error)


@pytest.mark.integration
def test_the_reader_searches_rsrt_indices_only(secure_node):
    admin, reader = secure_node.client(ADMIN), secure_node.client(READER)
    mine, other = f"rsrt-secure-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    ingest = secure_node.client(INGEST)
    ingest.index(index=mine, id="1", body={"caption": "a harbour"}, params={"refresh": "true"})
    admin.index(index=other, id="1", body={"caption": "secret"}, params={"refresh": "true"})
    try:
        assert reader.search(index=mine, body={"query": {"match_all": {}}})["hits"]["total"]["value"] == 1
        for attempt in (lambda: reader.index(index=mine, id="2", body={"caption": "x"}),
                        lambda: reader.search(index=other, body={"query": {"match_all": {}}}),
                        lambda: ingest.index(index=other, id="2", body={"caption": "x"})):
            with pytest.raises(opensearchpy.OpenSearchException) as caught:
                attempt()
            error = from_opensearch(caught.value)
            assert isinstance(error, ClusterAuthError) and "403" in str(error), error
    finally:
        admin.indices.delete(index=mine)
        admin.indices.delete(index=other)


@pytest.mark.integration
def test_no_password_in_files_logs_or_output(secure_node):
    files = secure_node.cluster.security
    assert stat.S_IMODE(files.passwords_file.stat().st_mode) == 0o600
    texts = [*secure_node.outputs, secure_node.cluster.state_file.read_text()]
    logs = secure_node.cluster.node_dir(0) / "logs"
    texts += [path.read_text(errors="replace") for path in logs.glob("*.log")]
    texts += [path.read_text() for path in (secure_node.cluster.node_dir(0) / "config").rglob("*.yml")]
    for password in secure_node.passwords.values():
        assert not any(password in text for text in texts)


def test_certificates_and_restart_reuse(tmp_path: Path):
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    files = SecurityFiles(tmp_path)
    passwords = files.ensure()
    assert passwords and sorted(passwords) == [ADMIN, DASHBOARDS, INGEST, READER]
    before = {path.name: path.read_bytes() for path in files.folder.glob("*.pem")}
    assert files.ensure() is None  # a restart reuses certificates and passwords
    assert before == {path.name: path.read_bytes() for path in files.folder.glob("*.pem")}
    assert files.passwords() == passwords and files.ca_file.read_bytes() == before["ca.pem"]
    ca = x509.load_pem_x509_certificate(before["ca.pem"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    node = x509.load_pem_x509_certificate(before["node.pem"])
    assert node.subject.rfc4514_string() == NODE_DN
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert set(node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    admin = x509.load_pem_x509_certificate(before["admin.pem"])
    assert admin.subject.rfc4514_string() == ADMIN_DN
    assert b"BEGIN PRIVATE KEY" in (files.folder / "node-key.pem").read_bytes()  # PKCS#8
    users = json.loads((files.folder / "opensearch-security" / "internal_users.yml").read_text())
    assert all(users[user]["hash"].startswith("$2") for user in passwords)
    mapping = json.loads((files.folder / "opensearch-security" / "roles_mapping.yml").read_text())
    assert "own_index" not in mapping and mapping["all_access"]["users"] == [ADMIN]
