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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

from ..errors import NodeError

ADMIN = "admin"
INGEST = "rsrt-ingest"
READER = "rsrt-reader"
DASHBOARDS = "rsrt-dashboards"  # OpenSearch Dashboards' own service account (reserved role kibana_server)
USERS = (ADMIN, INGEST, READER, DASHBOARDS)
NODE_DN = "CN=node,O=rsrt"
ADMIN_DN = "CN=admin,O=rsrt"
# rsrt's indices, versions and aliases: index.RSRT_INDEX_PATTERN (not imported: `rsrt node` stays light; a test checks)
INDEX_PATTERNS = ["rsrt*"]
CERT_DAYS = 3650

SECURITY_DIR = "opensearch-security"  # the plugin's folder in config/
CERT_DIR = "rsrt-security"  # the node's certificates, in its config dir
CLIENT_CERT_USERS = (INGEST, READER)  # certificates for `--client-cert`: CN=<user>,O=rsrt is the user

# What a portal's searches need (docs/security.md gives each one's reason): search, msearch and counts;
# the alias and the mapping's `_meta` (which encoder wrote the vectors, which cluster model embeds
# queries); the cluster's version and health for readiness probes; the model's state and predict for
# in-cluster embedding.
READER_CLUSTER_PERMISSIONS = [
    "cluster_composite_ops_ro", "cluster:monitor/main", "cluster:monitor/health",
    "cluster:admin/opensearch/ml/predict", "cluster:admin/opensearch/ml/models/search",
]
READER_INDEX_PERMISSIONS = ["read", "indices:admin/aliases/get", "indices:admin/mappings/get"]


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
            "cluster_permissions": READER_CLUSTER_PERMISSIONS,
            "index_permissions": [{"index_patterns": INDEX_PATTERNS, "allowed_actions": READER_INDEX_PERMISSIONS}],
        },
    }


def _roles_mapping() -> dict:
    return {  # no own_index: nobody may write an index named after themselves
        "_meta": {"type": "rolesmapping", "config_version": 2},
        "all_access": {"reserved": False, "users": [ADMIN], "backend_roles": ["admin"]},
        "rsrt_ingest": {"users": [INGEST]},
        "rsrt_reader": {"users": [READER]},
        # reserved roles of the plugin: Dashboards' server account, and analysts log into Dashboards as the reader
        "kibana_server": {"users": [DASHBOARDS]},
        "kibana_user": {"users": [READER]},
    }


def _config_files(hashes: dict[str, str]) -> dict[str, dict]:
    """The six files of config/opensearch-security/ (JSON is YAML: no YAML writer needed)."""
    basic = {  # challenge: true answers 401 at once, so it comes last
        "description": "HTTP basic against the internal users database",
        "http_enabled": True, "transport_enabled": True, "order": 1,
        "http_authenticator": {"type": "basic", "challenge": True},
        "authentication_backend": {"type": "intern"},
    }
    clientcert = {
        "description": "a client certificate signed by the cluster's CA: its CN is the user",
        "http_enabled": True, "transport_enabled": False, "order": 0,
        "http_authenticator": {"type": "clientcert", "config": {"username_attribute": "cn"}, "challenge": False},
        "authentication_backend": {"type": "noop"},
    }
    return {
        "config.yml": {"_meta": {"type": "config", "config_version": 2},
                       # do_not_fail_on_forbidden: a wildcard request (`_all/_mapping` for `rsrt model list`)
                       # answers with the indices the user may see instead of a 403
                       "config": {"dynamic": {"do_not_fail_on_forbidden": True,
                                              "http": {"anonymous_auth_enabled": False},
                                              "authc": {"clientcert_auth_domain": clientcert,
                                                        "basic_internal_auth_domain": basic}}}},
        "internal_users.yml": {
            "_meta": {"type": "internalusers", "config_version": 2},
            ADMIN: {"hash": hashes[ADMIN], "reserved": True, "backend_roles": ["admin"], "description": "rsrt admin"},
            INGEST: {"hash": hashes[INGEST], "description": "rsrt ingest, index management, model deploy"},
            READER: {"hash": hashes[READER], "description": "rsrt portals: search only"},
            DASHBOARDS: {"hash": hashes[DASHBOARDS], "description": "OpenSearch Dashboards' server account"},
        },
        "roles.yml": _roles(),
        "roles_mapping.yml": _roles_mapping(),
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

    def client_cert(self, user: str) -> tuple[Path, Path]:
        """(certificate, key) that authenticate as `user` (`--client-cert`/`--client-key`); key mode 0600."""
        return self.cluster_dir / "clients" / f"{user}.pem", self.cluster_dir / "clients" / f"{user}-key.pem"

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
        clients = self.cluster_dir / "clients"
        clients.mkdir(mode=0o700, exist_ok=True)
        for user in CLIENT_CERT_USERS:
            cert, key = self.client_cert(user)
            shutil.copy2(self.folder / f"{user}.pem", cert)
            shutil.copy2(self.folder / f"{user}-key.pem", key)
            key.chmod(0o600)
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
        target = config / CERT_DIR
        target.mkdir(exist_ok=True)
        for file in ("ca.pem", "node.pem", "node-key.pem"):  # never the CA's or the admin's key
            shutil.copy2(self.folder / file, target / file)
            (target / file).chmod(0o600)
        (config / SECURITY_DIR).mkdir(exist_ok=True)
        for path in (self.folder / SECURITY_DIR).iterdir():
            shutil.copy2(path, config / SECURITY_DIR / path.name)
        for path in [config, *config.rglob("*")]:  # the plugin warns about each file that is not owner-only
            path.chmod(0o700 if path.is_dir() else 0o600)
        return security_settings(target)


def security_settings(cert_dir: PurePath) -> list[str]:
    """The node's `opensearch.yml` security lines, its certificates in `cert_dir`.

    One function for the local node (`SecurityFiles.install`, the node's own config dir) and for clusters
    rsrt does not start (`write_external_config`, container paths), so the two cannot drift.
    """
    lines = []
    for layer in ("transport", "http"):
        lines += [f"plugins.security.ssl.{layer}.pemcert_filepath: {cert_dir / 'node.pem'}",
                  f"plugins.security.ssl.{layer}.pemkey_filepath: {cert_dir / 'node-key.pem'}",
                  f"plugins.security.ssl.{layer}.pemtrustedcas_filepath: {cert_dir / 'ca.pem'}"]
    return [
        *lines,
        "plugins.security.ssl.http.enabled: true",
        "plugins.security.ssl.http.clientauth_mode: OPTIONAL",  # client certificates, when given
        "plugins.security.ssl.transport.enforce_hostname_verification: false",
        "plugins.security.allow_default_init_securityindex: true",
        f'plugins.security.authcz.admin_dn: ["{ADMIN_DN}"]',
        f'plugins.security.nodes_dn: ["{NODE_DN}"]',
        'plugins.security.restapi.roles_enabled: ["all_access"]',
        "plugins.security.audit.type: noop",
    ]


# ------------------------------------------------------------------------------------------------
# The same material for a cluster rsrt does not start (Docker Compose, a VM): `rsrt node security-config`.
# ------------------------------------------------------------------------------------------------

CONTAINER_CONFIG_DIR = PurePosixPath("/usr/share/opensearch/config")  # the official image's config dir
COMPOSE_HOSTS = ("opensearch", "opensearch-node1", "opensearch-node2", "opensearch-node3")  # docker/*.yaml
HEALTHCHECK_USER = READER  # its client certificate authenticates the containers' health checks
# Mounted into the containers (read by the image's uid 1000, not the host user): readable, inside a 0700 dir.
# Never mounted, kept owner-only: the admin's and ingest's keys, the passwords. The CA's key is not kept.
_PUBLIC_MODE, _PRIVATE_MODE = 0o644, 0o600
_CERT_FILES = {"ca.pem": _PUBLIC_MODE, "node.pem": _PUBLIC_MODE, "node-key.pem": _PUBLIC_MODE,
               "admin.pem": _PUBLIC_MODE, "admin-key.pem": _PRIVATE_MODE,
               **{f"{user}.pem": _PUBLIC_MODE for user in CLIENT_CERT_USERS},
               **{f"{user}-key.pem": _PUBLIC_MODE if user == HEALTHCHECK_USER else _PRIVATE_MODE
                  for user in CLIENT_CERT_USERS}}
PASSWORDS_FILE = "passwords.json"
OPENSEARCH_YML = "opensearch.yml"
SECURITY_FILES = ("config.yml", "internal_users.yml", "roles.yml", "roles_mapping.yml", "action_groups.yml",
                  "tenants.yml")
EXTERNAL_FILES = (*_CERT_FILES, OPENSEARCH_YML, PASSWORDS_FILE, *(f"{SECURITY_DIR}/{n}" for n in SECURITY_FILES))
_STAGING = ".rsrt-security-config.tmp"


def external_opensearch_yml(node_config_dir: PurePosixPath = CONTAINER_CONFIG_DIR) -> str:
    """The opensearch.yml for a node rsrt does not start: it replaces the image's own file when mounted."""
    return "\n".join([
        "# Written by `rsrt node security-config`: rsrt's security settings (search/_node/security.py).",
        "# Docker: mounted over config/opensearch.yml; a VM: append the plugins.security lines to yours.",
        "network.host: 0.0.0.0  # as in the image's own opensearch.yml, which this file replaces",
        *security_settings(node_config_dir / CERT_DIR),
    ]) + "\n"


def write_external_config(out_dir: Path, node_config_dir: PurePosixPath = CONTAINER_CONFIG_DIR,
                          hosts: Iterable[str] = COMPOSE_HOSTS, force: bool = False) -> dict[str, str]:
    """Write the secure node's material into `out_dir` for a cluster rsrt does not start; returns the passwords.

    The same users, roles and settings as `rsrt node start --secure`, the certificates' paths those of
    `node_config_dir` (the container's). Refuses to replace earlier material unless `force`; only the files
    it writes are ever replaced, nothing else in `out_dir` is touched.
    """
    out_dir = out_dir.expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise NodeError(f"{out_dir} is not a directory")
    if out_dir.is_dir() and out_dir.stat().st_mode & 0o077:  # its keys are readable for the containers' uid
        raise NodeError(f"{out_dir} is open to other users (mode {out_dir.stat().st_mode & 0o777:o}); "
                        f"`chmod 700 {out_dir}` or give a new directory")
    existing = [name for name in EXTERNAL_FILES if (out_dir / name).exists()]
    if existing and not force:
        raise NodeError(f"{out_dir} already holds security material ({', '.join(existing[:3])}"
                        f"{', …' if len(existing) > 3 else ''}); pass --force to replace it (new certificates "
                        "and passwords: running nodes and clients must be given them too)")
    try:
        return _write_external(out_dir, node_config_dir, hosts)
    except OSError as exc:
        raise NodeError(f"cannot write the security material to {out_dir}: {exc.strerror or exc}") from None


def _write_external(out_dir: Path, node_config_dir: PurePosixPath, hosts: Iterable[str]) -> dict[str, str]:
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    out_dir.chmod(0o700)  # mkdir's mode is masked by the umask
    staging = out_dir / _STAGING
    if staging.exists():
        shutil.rmtree(staging)  # our own leftover from an interrupted run
    (staging / SECURITY_DIR).mkdir(parents=True)
    try:
        _write_certificates(staging, extra_dns=hosts)
        (staging / "ca-key.pem").unlink()  # nothing here signs more certificates: the key is not kept
        passwords = {user: secrets.token_urlsafe(18) for user in USERS}
        hashes = {user: _bcrypt(password) for user, password in passwords.items()}
        for name, body in _config_files(hashes).items():
            (staging / SECURITY_DIR / name).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
        (staging / OPENSEARCH_YML).write_text(external_opensearch_yml(node_config_dir), encoding="utf-8")
        (staging / PASSWORDS_FILE).write_text(json.dumps(passwords, indent=2), encoding="utf-8")
        modes = {**_CERT_FILES, PASSWORDS_FILE: _PRIVATE_MODE}
        for name in EXTERNAL_FILES:
            (staging / name).chmod(modes.get(name, _PUBLIC_MODE))
        (staging / PASSWORDS_FILE).replace(out_dir / PASSWORDS_FILE)  # first: a later failure leaves no
        (out_dir / SECURITY_DIR).mkdir(exist_ok=True)                 # hashes without their passwords
        for name in EXTERNAL_FILES:
            if name != PASSWORDS_FILE:
                (staging / name).replace(out_dir / name)
        gitignore = out_dir / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("# rsrt node security-config: keys and passwords, never committed\n*\n",
                                 encoding="utf-8")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return passwords


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


def sync_roles(base_url: str, security: SecurityFiles, timeout: float = 10.0) -> None:
    """Put rsrt's roles and their mappings through the security REST API, as the admin.

    The plugin reads `roles.yml` only when it creates its index, so a cluster made by an older rsrt keeps
    old roles; this brings them to the current definitions on every start (idempotent).
    """
    context = ssl.create_default_context(cafile=str(security.ca_file))
    token = base64.b64encode(f"{ADMIN}:{security.passwords()[ADMIN]}".encode()).decode("ascii")
    for kind, bodies in (("roles", _roles()), ("rolesmapping", _roles_mapping())):
        for name, body in bodies.items():
            if name.startswith("_") or name == "all_access":
                continue  # all_access is reserved: it stays as the files made it
            request = urllib.request.Request(
                f"{base_url}/_plugins/_security/api/{kind}/{name}", method="PUT",
                data=json.dumps(body).encode("utf-8"),
                headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context):
                    pass
            except OSError as exc:
                raise NodeError(f"could not update the security role {name!r} ({kind}): {exc}") from None
    for name, body in (("roles.yml", _roles()), ("roles_mapping.yml", _roles_mapping())):
        (security.folder / SECURITY_DIR / name).write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")


def _bcrypt(password: str) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=12)).decode("ascii")


def _write_certificates(folder: Path, extra_dns: Iterable[str] = ()) -> None:
    """Root CA, node certificate (server + client auth, loopback SANs) and admin certificate; PKCS#8 keys.

    `extra_dns`: more host names the node certificate covers (the Compose services' names), for clients that
    reach the node by them with host-name verification on.
    """
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
         [x509.DNSName("localhost"), *(x509.DNSName(host) for host in extra_dns if host != "localhost"),
          x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]),
        ("admin", "admin", [ExtendedKeyUsageOID.CLIENT_AUTH], []),
        *((user, user, [ExtendedKeyUsageOID.CLIENT_AUTH], []) for user in CLIENT_CERT_USERS),
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
