"""Connection settings, from flags or RSRT_OPENSEARCH_* variables; the password never leaks into repr."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_URL = "http://127.0.0.1:9200"
ENV_URL = "RSRT_OPENSEARCH_URL"
ENV_USER = "RSRT_OPENSEARCH_USER"
ENV_PASSWORD = "RSRT_OPENSEARCH_PASSWORD"
ENV_CA_FILE = "RSRT_OPENSEARCH_CA_FILE"
ENV_VERIFY = "RSRT_OPENSEARCH_VERIFY"
ENV_CLIENT_CERT = "RSRT_OPENSEARCH_CLIENT_CERT"
ENV_CLIENT_KEY = "RSRT_OPENSEARCH_CLIENT_KEY"


class Secret:
    """A string that prints as ****** so it cannot end up in logs or tracebacks by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('******')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _parse_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)")


def _split_urls(value: str) -> list[str]:
    urls = [u.strip().rstrip("/") for u in value.split(",") if u.strip()]
    if not urls:
        raise ConfigError("no OpenSearch URL given")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(f"OpenSearch URL {url!r} must look like http(s)://host:port")
        if parts.password:
            raise ConfigError(
                "put the password in RSRT_OPENSEARCH_PASSWORD or --password, not in the URL"
            )
    return urls


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the cluster is and how to authenticate; URLs may list several nodes."""

    urls: tuple[str, ...] = (DEFAULT_URL,)
    user: str | None = None
    password: Secret | None = field(default=None, repr=True)
    ca_file: str | None = None
    verify_certs: bool = True
    timeout: float = 30.0
    client_cert: str | None = None  # PEM certificate that authenticates (TLS client auth), instead of a password
    client_key: str | None = None  # its PEM key (when not inside client_cert)

    @classmethod
    def resolve(
        cls,
        url: str | None = None,
        user: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        verify_certs: bool | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
    ) -> ConnectionSettings:
        """Flags win over the environment, which wins over the local-node default."""
        env = os.environ if env is None else env
        urls = _split_urls(url or env.get(ENV_URL) or DEFAULT_URL)
        user = user or env.get(ENV_USER) or None
        raw_password = password if password is not None else env.get(ENV_PASSWORD)
        ca_file = ca_file or env.get(ENV_CA_FILE) or None
        if verify_certs is None:
            verify_certs = _parse_bool(env[ENV_VERIFY], ENV_VERIFY) if ENV_VERIFY in env else True
        client_cert = client_cert or env.get(ENV_CLIENT_CERT) or None
        client_key = client_key or env.get(ENV_CLIENT_KEY) or None
        for label, path in (("CA file", ca_file), ("client certificate", client_cert), ("client key", client_key)):
            if path and not os.path.isfile(path):
                raise ConfigError(f"{label} {path!r} does not exist")
        if client_key and not client_cert:
            raise ConfigError("a client key was given without a client certificate (--client-cert)")
        if client_cert and not urls[0].startswith("https:"):
            raise ConfigError("a client certificate needs an https:// URL")
        if raw_password and not user:
            raise ConfigError("a password was given without a user (set RSRT_OPENSEARCH_USER or --user)")
        return cls(
            urls=tuple(urls),
            user=user,
            password=Secret(raw_password) if raw_password else None,
            ca_file=ca_file,
            verify_certs=verify_certs,
            timeout=timeout or 30.0,
            client_cert=client_cert,
            client_key=client_key,
        )

    def describe(self) -> str:
        """A safe one-line description for messages: URLs and user, never the password."""
        who = f" as {self.user}" if self.user else (" with a client certificate" if self.client_cert else "")
        return ", ".join(self.urls) + who
