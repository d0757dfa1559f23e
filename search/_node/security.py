"""A secure local node's material: its own CA and certificates, passwords, and the security configuration.

Made once per cluster into `<cluster_dir>/security/` (the CA is exported as `<cluster_dir>/ca.pem`,
the passwords kept in `<cluster_dir>/passwords.json`, mode 0600) and reused on every restart; each
node's config dir gets a copy at spawn. No demo configuration: the six files of
`config/opensearch-security/` are written here, with bcrypt hashes only.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import NodeError

ADMIN = "admin"
INGEST = "rsrt-ingest"
READER = "rsrt-reader"
USERS = (ADMIN, INGEST, READER)
NODE_DN = "CN=node,O=rsrt"
ADMIN_DN = "CN=admin,O=rsrt"
INDEX_PATTERNS = ["rsrt*"]  # rsrt's indices, their versions and aliases (rsrt-images, rsrt-images-v1, …)
CERT_DAYS = 3650

SECURITY_DIR = "opensearch-security"  # the plugin's folder in config/


def _roles() -> dict:
    return {
        "_meta": {"type": "roles", "config_version": 2},
        "rsrt_ingest": {
            "description": "rsrt ingest: write and manage rsrt indices, templates, pipelines and models",
            "cluster_permissions": [
                "cluster_composite_ops", "cluster_monitor",
                "indices:admin/template/*", "indices:admin/index_template/*",
                "cluster:admin/ingest/pipeline/*", "cluster:admin/search/pipeline/*",
                "cluster:admin/opensearch/ml/*",
            ],
            "index_permissions": [{"index_patterns": INDEX_PATTERNS,
                                   "allowed_actions": ["crud", "create_index", "manage", "manage_aliases"]}],
        },
        "rsrt_reader": {
            "description": "rsrt portals: read the rsrt indices, embed queries in the cluster",
            "cluster_permissions": ["cluster_composite_ops_ro", "cluster:admin/opensearch/ml/predict"],
            "index_permissions": [{"index_patterns": INDEX_PATTERNS, "allowed_actions": ["read"]}],
        },
    }


def _config_files(hashes: dict[str, str]) -> dict[str, dict]:
    """The six files of config/opensearch-security/ (JSON is YAML: no YAML writer needed)."""
    basic = {
        "description": "HTTP basic against the internal users database",
        "http_enabled": True, "transport_enabled": True, "order": 0,
        "http_authenticator": {"type": "basic", "challenge": True},
        "authentication_backend": {"type": "intern"},
    }
    return {
        "config.yml": {"_meta": {"type": "config", "config_version": 2},
                       "config": {"dynamic": {"http": {"anonymous_auth_enabled": False},
                                              "authc": {"basic_internal_auth_domain": basic}}}},
        "internal_users.yml": {
            "_meta": {"type": "internalusers", "config_version": 2},
            ADMIN: {"hash": hashes[ADMIN], "reserved": True, "backend_roles": ["admin"], "description": "rsrt admin"},
            INGEST: {"hash": hashes[INGEST], "description": "rsrt ingest, index management, model deploy"},
            READER: {"hash": hashes[READER], "description": "rsrt portals: search only"},
        },
        "roles.yml": _roles(),
        "roles_mapping.yml": {  # no own_index: nobody may write an index named after themselves
            "_meta": {"type": "rolesmapping", "config_version": 2},
            "all_access": {"reserved": False, "users": [ADMIN], "backend_roles": ["admin"]},
            "rsrt_ingest": {"users": [INGEST]},
            "rsrt_reader": {"users": [READER]},
        },
        "action_groups.yml": {"_meta": {"type": "actiongroups", "config_version": 2}},
        "tenants.yml": {"_meta": {"type": "tenants", "config_version": 2}},
    }


@dataclass(frozen=True)
class SecurityFiles:
    """Where one cluster's security material lives."""

    cluster_dir: Path

    @property
    def folder(self) -> Path:
        return self.cluster_dir / "security"

    @property
    def ca_file(self) -> Path:
        """The CA for clients (`--ca-file`)."""
        return self.cluster_dir / "ca.pem"

    @property
    def passwords_file(self) -> Path:
        return self.cluster_dir / "passwords.json"

    def exists(self) -> bool:
        return self.passwords_file.exists() and (self.folder / SECURITY_DIR / "internal_users.yml").exists()

    def passwords(self) -> dict[str, str]:
        try:
            return json.loads(self.passwords_file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise NodeError(f"cannot read {self.passwords_file} ({exc.strerror}); run as its owner "
                            "or pass --user/--password") from None

    def users(self) -> list[str]:
        return sorted(self.passwords()) if self.passwords_file.exists() else []

    def state_fields(self) -> dict:
        """What the node state records about security: never a password."""
        return {"secure": True, "ca_file": str(self.ca_file), "users": self.users()}

    def ensure(self) -> dict[str, str] | None:
        """Make the material when missing; returns the new passwords (to show once), None when reused."""
        if self.exists():
            return None
        if self.folder.exists():
            shutil.rmtree(self.folder)  # half-made: start over
        (self.folder / SECURITY_DIR).mkdir(parents=True)
        self.folder.chmod(0o700)
        _write_certificates(self.folder)
        shutil.copy2(self.folder / "ca.pem", self.ca_file)
        self.ca_file.chmod(0o644)
        passwords = {user: secrets.token_urlsafe(18) for user in USERS}
        hashes = {user: _bcrypt(password) for user, password in passwords.items()}
        for name, body in _config_files(hashes).items():
            (self.folder / SECURITY_DIR / name).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        tmp = self.passwords_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(passwords, handle, indent=2)
        tmp.replace(self.passwords_file)
        return passwords

    def install(self, config: Path) -> list[str]:
        """Copy the material into a node's (otherwise complete) config dir; returns its opensearch.yml lines."""
        target = config / "rsrt-security"
        target.mkdir(exist_ok=True)
        for file in ("ca.pem", "node.pem", "node-key.pem"):  # never the CA's or the admin's key
            shutil.copy2(self.folder / file, target / file)
            (target / file).chmod(0o600)
        (config / SECURITY_DIR).mkdir(exist_ok=True)
        for path in (self.folder / SECURITY_DIR).iterdir():
            shutil.copy2(path, config / SECURITY_DIR / path.name)
        for path in [config, *config.rglob("*")]:  # the plugin warns about each file that is not owner-only
            path.chmod(0o700 if path.is_dir() else 0o600)
        lines = []
        for layer in ("transport", "http"):
            lines += [f"plugins.security.ssl.{layer}.pemcert_filepath: {target / 'node.pem'}",
                      f"plugins.security.ssl.{layer}.pemkey_filepath: {target / 'node-key.pem'}",
                      f"plugins.security.ssl.{layer}.pemtrustedcas_filepath: {target / 'ca.pem'}"]
        return [
            *lines,
            "plugins.security.ssl.http.enabled: true",
            "plugins.security.ssl.transport.enforce_hostname_verification: false",
            "plugins.security.allow_default_init_securityindex: true",
            f'plugins.security.authcz.admin_dn: ["{ADMIN_DN}"]',
            f'plugins.security.nodes_dn: ["{NODE_DN}"]',
            'plugins.security.restapi.roles_enabled: ["all_access"]',
            "plugins.security.audit.type: noop",
        ]


def http_json(url: str, security: SecurityFiles | None = None, timeout: float = 2.0) -> dict:
    """GET a JSON answer; with `security`, over TLS verified by the cluster's CA, as its admin."""
    request = urllib.request.Request(url)
    context = None
    if security is not None:
        context = ssl.create_default_context(cafile=str(security.ca_file))
        token = base64.b64encode(f"{ADMIN}:{security.passwords()[ADMIN]}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.loads(response.read().decode("utf-8"))


def _bcrypt(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=12)).decode("ascii")


def _write_certificates(folder: Path) -> None:
    """Root CA, node certificate (server + client auth, loopback SANs) and admin certificate; PKCS#8 keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)

    def name(common: str) -> x509.Name:  # RFC 4514 order: CN=<common>,O=rsrt
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rsrt"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def save(stem: str, key, cert: x509.Certificate) -> None:
        (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / f"{stem}-key.pem").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    def build(subject: x509.Name, key, issuer: x509.Name, signer) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()),
                               critical=False))

    def usage(cert_sign: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=not cert_sign,
                             data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
                             crl_sign=cert_sign, encipher_only=False, decipher_only=False)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rsrt"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "rsrt local root CA")])
    ca = (build(ca_name, ca_key, ca_name, ca_key)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(cert_sign=True), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "ca-key.pem").write_bytes(ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for stem, common, purposes, sans in (
        ("node", "node", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
         [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
          x509.IPAddress(ipaddress.ip_address("::1"))]),
        ("admin", "admin", [ExtendedKeyUsageOID.CLIENT_AUTH], []),
    ):
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        builder = (build(name(common), key, ca_name, ca_key)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(usage(cert_sign=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(purposes), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        save(stem, key, builder.sign(ca_key, hashes.SHA256()))
    for key_file in folder.glob("*-key.pem"):
        key_file.chmod(0o600)
