"""The Docker Compose files in docker/, checked as data: no Docker engine is needed.

The files are parsed with PyYAML (with Compose's `!reset`/`!override` tags) and `${…}` is resolved the
way Compose does (defaults, required variables, `$$` escapes), so ports, heap and password handling are
checked as Compose would see them. The single node is compared with the settings the local Maven-built
node writes (`search/node.py`), the image tags with `rsrt.search._node.DEFAULT_VERSION`. Security is
checked against what `rsrt node security-config` really writes (run into a tmp dir): every file the node
needs is mounted where its opensearch.yml says, that opensearch.yml is `security_settings`' (the local
secure node's own lines), the users and roles are rsrt's, the node certificate names the services.
Only when `docker compose` exists and a Docker engine answers does `docker compose config` validate the
files as well; without one (as on rsrt's CI) that part does not run, and nothing claims it did.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import run_cli
from rsrt.search import config as rsrt_config
from rsrt.search._node import DEFAULT_VERSION
from rsrt.search._node.security import (
    CERT_DIR,
    COMPOSE_HOSTS,
    CONTAINER_CONFIG_DIR,
    DASHBOARDS,
    EXTERNAL_FILES,
    HEALTHCHECK_USER,
    INGEST,
    NODE_DN,
    OPENSEARCH_YML,
    PASSWORDS_FILE,
    READER,
    READER_CLUSTER_PERMISSIONS,
    SECURITY_DIR,
    SECURITY_FILES,
    USERS,
    SecurityFiles,
    _roles,
    _roles_mapping,
    security_settings,
)
from rsrt.search.node import LocalCluster, NodeSettings

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
SINGLE = DOCKER / "compose.yaml"
CLUSTER = DOCKER / "compose.cluster.yaml"
INSECURE = DOCKER / "compose.insecure.yaml"
README = DOCKER / "README.md"
SECURE_FILES = (SINGLE, CLUSTER)
ALL_FILES = (SINGLE, CLUSTER, INSECURE)

OPENSEARCH_IMAGE = "opensearchproject/opensearch"
DASHBOARDS_IMAGE = "opensearchproject/opensearch-dashboards"
DATA_PATH = "/usr/share/opensearch/data"
PASSWORD_VAR = "RSRT_DOCKER_DASHBOARDS_PASSWORD"  # Dashboards' service account; nothing else takes one
DEMO_PASSWORD_VAR = "OPENSEARCH_INITIAL_ADMIN_PASSWORD"  # the demo configuration's: never used here
TEST_PASSWORD = "Compose-Check-7!qZ"  # only ever fed to the resolver / `docker compose config`
WITH_PASSWORD = {PASSWORD_VAR: TEST_PASSWORD}
SECURITY_SWITCHES = ("DISABLE_SECURITY_PLUGIN", "DISABLE_SECURITY_DASHBOARDS_PLUGIN", "plugins.security.disabled")
TOP_LEVEL_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}
GENERATED = "./secrets"  # where the compose files expect `rsrt node security-config docker/secrets`
DASHBOARDS_CONFIG = "/usr/share/opensearch-dashboards/config"

# What Compose treats specially in a string: `$$` (a literal `$`), ${NAME} with an optional
# modifier (:-  -  :?  ?  :+  +), a bare $NAME, or a lone `$` (an error in Compose).
_DOLLAR = re.compile(
    r"\$\$"
    r"|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>\$[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<lone>\$)"
)
_DURATION = re.compile(r"^(?:\d+(?:\.\d+)?(?:us|ms|s|m|h))+$")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# ------------------------------------------------------------------------------------------------
# Helpers: loading, walking, resolving and merging Compose files the way Compose does.
# ------------------------------------------------------------------------------------------------


class Reset:
    """Compose's `!reset`: the key is removed from what the files before this one set."""


class Override(list):
    """Compose's `!override` on a sequence: replaces the earlier files' sequence instead of extending it."""


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor("!override", lambda loader, node: Override(loader.construct_sequence(node)))


def load(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(encoding="utf-8"), Loader=ComposeLoader)  # a SafeLoader: no objects
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def strings(node: Any) -> Iterator[str]:
    """Every string (keys and values) in a parsed file: what Compose interpolates."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolations(text: str) -> list[tuple[str, str, str]]:
    """(name, modifier, argument) of each `${…}` Compose resolves in text; `$${…}` is not one."""
    return [(m["name"], m["op"] or "", m["arg"] or "") for m in _DOLLAR.finditer(text) if m["name"]]


def escaped_names(text: str) -> list[str]:
    """Names in `$${NAME}` / `$$NAME`: variables the container's shell expands, not Compose."""
    return re.findall(r"\$\$\{?([A-Za-z_][A-Za-z0-9_]*)", text)


def stray_dollars(text: str) -> list[str]:
    return [m["bare"] or m["lone"] for m in _DOLLAR.finditer(text) if m["bare"] or m["lone"]]


class MissingVariable(LookupError):
    pass


def resolve(text: str, env: dict[str, str]) -> str:
    """Compose interpolation of one string against env (only the forms Compose supports)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match["bare"]:
            return env.get(match["bare"][1:], "")
        if match["lone"]:
            raise ValueError(f"a lone `$` in {text!r}: Compose rejects it (write $$)")
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        value = env.get(name)
        present, non_empty = value is not None, bool(value)
        if op == ":-":
            return value if non_empty else arg
        if op == "-":
            return value if present else arg
        if op in (":?", "?"):
            if (op == ":?" and not non_empty) or (op == "?" and not present):
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if non_empty else ""
        if op == "+":
            return arg if present else ""
        return value or ""

    return _DOLLAR.sub(substitute, text)


def resolve_all(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return resolve(node, env)
    if isinstance(node, dict):
        return {resolve_all(k, env): resolve_all(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_all(item, env) for item in node]
    return node


def services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = data.get("services")
    assert isinstance(found, dict) and found, "no services"
    return found


def image_repo(service: dict[str, Any]) -> str:
    return str(service.get("image", "")).rsplit(":", 1)[0]


def opensearch_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(data).items() if image_repo(s) == OPENSEARCH_IMAGE}


def dashboards_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(data).items() if image_repo(s) == DASHBOARDS_IMAGE}


def setting_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, whichever of Compose's two forms the file uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = [item.split("=", 1) if "=" in item else [item, None] for item in raw]
        return {key: value for key, value in pairs}
    return {str(key): setting_text(value) for key, value in raw.items()}


def split_list(value: str | None) -> list[str]:
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def published_ports(service: dict[str, Any], env: dict[str, str]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) of each published port, after interpolation."""
    result = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result.append((resolve(str(entry.get("host_ip", "")), env),
                           resolve(str(entry.get("published", "")), env), str(entry["target"])))
            continue
        parts = resolve(str(entry), env).split("/")[0].split(":")
        if len(parts) == 3:
            result.append((parts[0], parts[1], parts[2]))
        elif len(parts) == 2:
            result.append(("", parts[0], parts[1]))  # all interfaces: never wanted here
        else:
            result.append(("", "", parts[0]))
    return result


def named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> named volume, for short-syntax `name:/path` and long-syntax `type: volume`."""
    mounts = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type") == "volume" and entry.get("source"):
                mounts[entry["target"]] = entry["source"]
            continue
        source, _, rest = str(entry).partition(":")
        if rest and not source.startswith(("/", ".", "~", "$")):
            mounts[rest.split(":")[0]] = source
    return mounts


def healthcheck_command(service: dict[str, Any]) -> str:
    check = service.get("healthcheck")
    assert isinstance(check, dict), "no healthcheck"
    test = check.get("test")
    assert isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL"), f"bad test: {test!r}"
    return " ".join(str(part) for part in test[1:])


def seconds(duration: str) -> float:
    assert _DURATION.match(duration), f"{duration!r} is not a Compose duration"
    return sum(float(n) * _DURATION_UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)",
                                                                     duration))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`docker compose -f base -f override`: the merge rules the files here rely on."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key == "services":
            for name, service in value.items():
                merged["services"][name] = merge_service(merged["services"].get(name, {}), service)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Reset):
            merged.pop(key, None)
        elif isinstance(value, Override):
            merged[key] = list(value)
        elif key == "environment":
            merged[key] = {**environment(base), **environment(override)}
        elif key in ("ports", "volumes", "expose"):
            merged[key] = [*base.get(key, []), *[v for v in value if v not in base.get(key, [])]]
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = {**base[key], **copy.deepcopy(value)}  # healthcheck.test is replaced
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def local_node_config(tmp_path: Path, nodes: int) -> dict[str, str | None]:
    """The opensearch.yml the local node (search/node.py) writes for its first node."""
    settings = NodeSettings(home=tmp_path, nodes=nodes, run_as="nobody")
    text = LocalCluster(settings)._node_config(0)
    parsed = yaml.safe_load(text)
    assert isinstance(parsed, dict)
    return {key: value if isinstance(value, list) else setting_text(value) for key, value in parsed.items()}


def local_heap() -> str:
    return NodeSettings.__dataclass_fields__["heap"].default


# ------------------------------------------------------------------------------------------------
# The files as a whole.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: p.name)
def test_file_is_a_compose_mapping_without_stray_dollars(path: Path) -> None:
    data = load(path)
    unknown = {k for k in data if not k.startswith("x-")} - TOP_LEVEL_KEYS
    assert not unknown, f"{path.name}: unknown top-level keys {unknown} (`version` is obsolete)"
    assert isinstance(data.get("name"), str) and data["name"], f"{path.name}: no project name"
    services(data)
    for text in strings(data):
        assert not stray_dollars(text), f"{path.name}: {text!r}: write ${{NAME}} for Compose, $$ for the shell"
        for name, op, _ in interpolations(text):
            assert op in ("", ":-", "-", ":?", "?"), f"{path.name}: unexpected ${{{name}{op}…}}"


def test_project_names_keep_the_setups_apart() -> None:
    names = [load(path)["name"] for path in ALL_FILES]
    assert len(set(names)) == len(names), names


def test_images_are_pinned_to_the_local_node_version() -> None:
    assert re.fullmatch(r"2\.19\.\d+", DEFAULT_VERSION), DEFAULT_VERSION
    for path in SECURE_FILES:
        data = load(path)
        seen = set()
        for name, service in services(data).items():
            image = service.get("image")
            assert isinstance(image, str), f"{path.name}:{name} has no image"
            repo, _, tag = image.rpartition(":")
            assert repo in (OPENSEARCH_IMAGE, DASHBOARDS_IMAGE), f"{path.name}:{name}: {image}"
            assert re.fullmatch(r"2\.19\.\d+", tag), f"{path.name}:{name}: {image} is not pinned to 2.19.x"
            assert tag == DEFAULT_VERSION, f"{path.name}:{name}: {image}, local node is {DEFAULT_VERSION}"
            seen.add(repo)
        assert seen == {OPENSEARCH_IMAGE, DASHBOARDS_IMAGE}, f"{path.name}: {seen}"
    for name, service in services(load(INSECURE)).items():
        assert "image" not in service, f"the insecure override must not change {name}'s image"


# ------------------------------------------------------------------------------------------------
# Settings: the same node as the local one.
# ------------------------------------------------------------------------------------------------


def test_single_node_has_the_local_node_settings(tmp_path: Path) -> None:
    local = local_node_config(tmp_path, nodes=1)
    nodes = opensearch_services(load(SINGLE))
    assert list(nodes) == ["opensearch"], list(nodes)
    env = environment(nodes["opensearch"])
    for key in ("cluster.name", "discovery.type", "cluster.routing.allocation.disk.threshold_enabled",
                "action.destructive_requires_name"):
        assert env.get(key) == local[key], f"{key}: docker {env.get(key)!r} vs local {local[key]!r}"
    assert env["cluster.name"] == "rsrt"
    assert env["discovery.type"] == "single-node"
    assert "discovery.seed_hosts" not in env and "cluster.initial_cluster_manager_nodes" not in env


def test_cluster_has_the_local_cluster_settings(tmp_path: Path) -> None:
    local = local_node_config(tmp_path, nodes=3)
    nodes = opensearch_services(load(CLUSTER))
    for name, service in nodes.items():
        env = environment(service)
        for key in ("cluster.name", "cluster.routing.allocation.disk.threshold_enabled",
                    "action.destructive_requires_name"):
            assert env.get(key) == local[key], f"{name} {key}: {env.get(key)!r} vs local {local[key]!r}"
        assert "discovery.type" not in env and "discovery.type" not in local
        assert len(split_list(env["discovery.seed_hosts"])) == len(local["discovery.seed_hosts"])
        assert (len(split_list(env["cluster.initial_cluster_manager_nodes"]))
                == len(local["cluster.initial_cluster_manager_nodes"]))


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_heap_memlock_and_open_files(path: Path) -> None:
    heap = local_heap()
    assert heap == "1g"
    for name, service in opensearch_services(load(path)).items():
        env = environment(service)
        assert resolve(env["OPENSEARCH_JAVA_OPTS"] or "", {}) == f"-Xms{heap} -Xmx{heap}", name
        assert resolve(env["OPENSEARCH_JAVA_OPTS"] or "", {"RSRT_DOCKER_HEAP": "512m"}) == "-Xms512m -Xmx512m"
        assert env.get("bootstrap.memory_lock") == "true", name
        limits = service.get("ulimits", {})
        assert limits.get("memlock") == {"soft": -1, "hard": -1}, name
        assert limits.get("nofile") == {"soft": 65536, "hard": 65536}, name


def test_cluster_nodes_name_each_other_exactly() -> None:
    nodes = opensearch_services(load(CLUSTER))
    assert sorted(nodes) == ["opensearch-node1", "opensearch-node2", "opensearch-node3"]
    hosts = sorted(service.get("hostname", name) for name, service in nodes.items())
    node_names = sorted(environment(service)["node.name"] or "" for service in nodes.values())
    assert len(set(node_names)) == 3 and all(node_names), node_names
    for name, service in nodes.items():
        env = environment(service)
        seeds, managers = split_list(env["discovery.seed_hosts"]), split_list(
            env["cluster.initial_cluster_manager_nodes"])
        assert sorted(seeds) == hosts, f"{name}: seed hosts {seeds} vs services {hosts}"
        assert sorted(managers) == node_names, f"{name}: initial managers {managers} vs nodes {node_names}"
        roles = split_list(env.get("node.roles"))
        assert {"cluster_manager", "data"} <= set(roles), f"{name}: roles {roles}"
        assert env["cluster.name"] == "rsrt"
    clusters = {environment(service)["cluster.name"] for service in nodes.values()}
    assert clusters == {"rsrt"}


# ------------------------------------------------------------------------------------------------
# Ports, volumes, health, start order.
# ------------------------------------------------------------------------------------------------

EXPECTED_PORTS = {
    SINGLE: {"opensearch": [("9200", "9200")], "opensearch-dashboards": [("5601", "5601")]},
    CLUSTER: {"opensearch-node1": [("9200", "9200")], "opensearch-node2": [("9201", "9200")],
              "opensearch-node3": [("9202", "9200")], "opensearch-dashboards": [("5601", "5601")]},
}


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_ports_are_published_on_loopback_by_default(path: Path) -> None:
    data = load(path)
    elsewhere = {**WITH_PASSWORD, "RSRT_DOCKER_BIND": "192.0.2.7"}
    for bind, env in (("127.0.0.1", WITH_PASSWORD), ("192.0.2.7", elsewhere)):
        found = {name: published_ports(service, env) for name, service in services(data).items()}
        expected = {name: [(bind, host, container) for host, container in ports]
                    for name, ports in EXPECTED_PORTS[path].items()}
        assert found == expected, f"{path.name}: {found}"


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_named_volumes_are_declared_and_hold_the_data(path: Path) -> None:
    data = load(path)
    declared = set(data.get("volumes") or {})
    used: set[str] = set()
    for service in services(data).values():
        used |= set(named_volume_mounts(service).values())
    assert used <= declared, f"{path.name}: used but not declared: {used - declared}"
    assert declared <= used, f"{path.name}: declared but unused: {declared - used}"
    data_volumes = [named_volume_mounts(s).get(DATA_PATH) for s in opensearch_services(data).values()]
    assert all(data_volumes), f"{path.name}: a node keeps its data outside a named volume"
    assert len(set(data_volumes)) == len(data_volumes), f"{path.name}: nodes share a data volume"


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_healthchecks_and_dashboards_wait_for_healthy_nodes(path: Path) -> None:
    data = load(path)
    nodes = opensearch_services(data)
    for name, service in nodes.items():
        command = healthcheck_command(service)
        resolved = resolve(command, WITH_PASSWORD)
        assert "https://localhost:9200/_cluster/health" in resolved, f"{name}: {resolved}"
        fails_on_http_errors = re.search(r"(?:^|\s)curl\s(?:.*\s)?-[a-zA-Z]*f", resolved)
        assert fails_on_http_errors, f"{name}: curl must fail on HTTP errors: {resolved}"
        check = service["healthcheck"]
        assert seconds(check["interval"]) > 0 and seconds(check["start_period"]) >= 30
        assert seconds(check["timeout"]) > 5  # the health call itself waits up to 5 s
        assert isinstance(check["retries"], int) and check["retries"] > 0
    for name, service in dashboards_services(data).items():
        assert "localhost:5601" in healthcheck_command(service), name
        depends = service.get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on must name conditions"
        assert set(depends) == set(nodes), f"{name} waits for {set(depends)}, nodes are {set(nodes)}"
        for node, condition in depends.items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {node}: {condition}"
        hosts = json.loads(environment(service)["OPENSEARCH_HOSTS"] or "[]")
        assert hosts == [f"https://{node}:9200" for node in sorted(nodes)], hosts


# ------------------------------------------------------------------------------------------------
# Security: rsrt's own material (`rsrt node security-config`), mounted; no demo configuration, no
# password in the files; the insecure override clearly separate.
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    """What `rsrt node security-config` wrote into a tmp dir, and what it printed."""

    folder: Path
    output: str

    def passwords(self) -> dict[str, str]:
        return json.loads((self.folder / PASSWORDS_FILE).read_text(encoding="utf-8"))

    def security_file(self, name: str) -> dict[str, Any]:
        parsed = yaml.safe_load((self.folder / SECURITY_DIR / name).read_text(encoding="utf-8"))
        assert isinstance(parsed, dict), name
        return parsed


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    folder = tmp_path_factory.mktemp("docker") / "secrets"
    result = run_cli(["node", "security-config", str(folder)], dict(os.environ))
    assert result.returncode == 0, result.stdout + result.stderr
    return Generated(folder, result.stdout + result.stderr)


def secret_mounts(data: dict[str, Any], service: dict[str, Any]) -> dict[str, str]:
    """target in the container -> the file (relative to docker/) Compose mounts there, read-only.

    Compose secrets are read-only bind mounts; a bind mount in `volumes` must say `:ro` / read_only.
    """
    declared = data.get("secrets") or {}
    mounts: dict[str, str] = {}
    for entry in service.get("secrets") or []:
        source, target = (entry, f"/run/secrets/{entry}") if isinstance(entry, str) else (
            entry["source"], entry.get("target", f"/run/secrets/{entry['source']}"))
        assert source in declared, f"secret {source!r} is used but not declared"
        mounts[target] = declared[source]["file"]
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict) and entry.get("type") == "bind":
            assert entry.get("read_only") is True, entry
            mounts[entry["target"]] = entry["source"]
        elif isinstance(entry, str) and entry.startswith((".", "/", "~", "$")):
            source, target, *options = entry.split(":")
            assert options and "ro" in options[0].split(","), f"{entry}: a bind mount must be :ro"
            mounts[target] = source
    return mounts


def generated_file(source: str, generated: Generated) -> Path:
    """The file of `generated` a compose source path `./secrets/<name>` names (it must be one rsrt writes)."""
    assert source.startswith(GENERATED + "/"), f"{source} is not under {GENERATED}/"
    name = source[len(GENERATED) + 1:]
    assert name in EXTERNAL_FILES, f"{source}: `rsrt node security-config` writes no {name}"
    return generated.folder / name


def settings_paths(lines: list[str]) -> set[str]:
    """The files the opensearch.yml security lines name."""
    return {line.split(": ", 1)[1] for line in lines if line.split(":", 1)[0].endswith("_filepath")}


def test_security_config_writes_what_node_start_secure_makes(generated: Generated, tmp_path: Path) -> None:
    passwords = generated.passwords()
    assert sorted(passwords) == sorted(USERS)
    assert all(generated.output.count(password) == 1 for password in passwords.values()), "shown exactly once"
    assert stat.S_IMODE((generated.folder / PASSWORDS_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(generated.folder.stat().st_mode) == 0o700
    for name in EXTERNAL_FILES:
        assert (generated.folder / name).is_file(), name
    assert not (generated.folder / "ca-key.pem").exists(), "the CA's key is not kept"
    for key in ("admin-key.pem", f"{INGEST}-key.pem"):  # never mounted: owner-only
        assert stat.S_IMODE((generated.folder / key).stat().st_mode) == 0o600, key
    # The same six files as the local secure node's, but for the hashes (other passwords).
    local = SecurityFiles(tmp_path / "local")
    local.ensure()
    for name in SECURITY_FILES:
        ours = yaml.safe_load((local.folder / SECURITY_DIR / name).read_text(encoding="utf-8"))
        theirs = generated.security_file(name)
        if name == "internal_users.yml":
            ours = {user: {k: v for k, v in body.items() if k != "hash"} for user, body in ours.items()}
            theirs = {user: {k: v for k, v in body.items() if k != "hash"} for user, body in theirs.items()}
        assert theirs == ours, name


def test_security_config_refuses_to_overwrite_unless_forced(generated: Generated, tmp_path: Path) -> None:
    folder = tmp_path / "secrets"
    assert run_cli(["node", "security-config", str(folder)], dict(os.environ)).returncode == 0
    before = (folder / "node.pem").read_bytes()
    mine = folder / "notes.txt"
    mine.write_text("not rsrt's", encoding="utf-8")
    again = run_cli(["node", "security-config", str(folder)], dict(os.environ))
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr, again.stderr
    assert (folder / "node.pem").read_bytes() == before
    forced = run_cli(["node", "security-config", "--force", str(folder)], dict(os.environ))
    assert forced.returncode == 0, forced.stderr
    assert (folder / "node.pem").read_bytes() != before
    assert mine.read_text(encoding="utf-8") == "not rsrt's", "a file rsrt did not write was touched"
    assert not any(p.name.startswith(".rsrt-") for p in folder.iterdir()), "staging left behind"
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    refused = run_cli(["node", "security-config", str(shared)], dict(os.environ))
    assert refused.returncode != 0 and "chmod 700" in refused.stderr and not any(shared.iterdir()), refused.stderr


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_every_file_the_node_needs_is_mounted(path: Path, generated: Generated) -> None:
    data = load(path)
    lines = security_settings(CONTAINER_CONFIG_DIR / CERT_DIR)
    expected = {str(CONTAINER_CONFIG_DIR / OPENSEARCH_YML): OPENSEARCH_YML,
                **{str(CONTAINER_CONFIG_DIR / SECURITY_DIR / n): f"{SECURITY_DIR}/{n}" for n in SECURITY_FILES},
                **{target: Path(target).name for target in settings_paths(lines)}}  # certificates: flat in the dir
    assert len(settings_paths(lines)) == 3  # node.pem, node-key.pem, ca.pem
    for name, service in opensearch_services(data).items():
        mounts = secret_mounts(data, service)
        for target, file in expected.items():
            assert target in mounts, f"{path.name}:{name} does not mount {file} at {target}"
            assert generated_file(mounts[target], generated) == generated.folder / file, (name, target)
        for source in mounts.values():  # and nothing is mounted that rsrt does not write
            assert generated_file(source, generated).is_file(), f"{name}: {source}"
        assert not any(target.endswith(("admin-key.pem", f"{INGEST}-key.pem")) for target in mounts), name


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_the_mounted_opensearch_yml_is_the_local_nodes_security_settings(path: Path, generated: Generated,
                                                                         tmp_path: Path) -> None:
    data = load(path)
    target = str(CONTAINER_CONFIG_DIR / OPENSEARCH_YML)
    for name, service in opensearch_services(data).items():
        mounted = generated_file(secret_mounts(data, service)[target], generated).read_text(encoding="utf-8")
        settings = [line.split("  #")[0] for line in mounted.splitlines()
                    if line.strip() and not line.startswith("#")]
        assert settings == ["network.host: 0.0.0.0", *security_settings(CONTAINER_CONFIG_DIR / CERT_DIR)], name
        parsed = yaml.safe_load(mounted)
        assert parsed["plugins.security.nodes_dn"] == [NODE_DN] and parsed["plugins.security.ssl.http.enabled"]
        env = environment(service)
        assert not any(key.startswith("plugins.security") for key in env), f"{name}: security settings in env"
    # the local secure node writes the very same lines, with its own config dir
    local = SecurityFiles(tmp_path / "local")
    local.ensure()
    config = tmp_path / "config"
    config.mkdir()
    assert local.install(config) == security_settings(config / CERT_DIR)


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_users_and_roles_are_rsrts(path: Path, generated: Generated) -> None:
    users = generated.security_file("internal_users.yml")
    assert sorted(k for k in users if not k.startswith("_")) == sorted(USERS)
    assert "kibanaserver" not in users and all(str(users[u]["hash"]).startswith("$2") for u in USERS)
    assert generated.security_file("roles.yml") == _roles()
    mapping = generated.security_file("roles_mapping.yml")
    assert mapping == _roles_mapping() and "own_index" not in mapping
    assert mapping["kibana_server"]["users"] == [DASHBOARDS]
    assert READER in mapping["kibana_user"]["users"] and READER in mapping["rsrt_reader"]["users"]
    for name, service in dashboards_services(load(path)).items():
        assert environment(service)["OPENSEARCH_USERNAME"] == DASHBOARDS, name


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_no_demo_configuration(path: Path, generated: Generated) -> None:
    data = load(path)
    for text in strings(data):  # what Compose reads (comments aside): the switch that turns the demo off only
        assert text == "DISABLE_INSTALL_DEMO_CONFIG" or not re.search(r"demo|kibanaserver|admin:", text, re.I), text
        assert DEMO_PASSWORD_VAR not in text, text
    for name, service in opensearch_services(data).items():
        assert environment(service).get("DISABLE_INSTALL_DEMO_CONFIG") == "true", name
    for name, service in dashboards_services(data).items():
        env = environment(service)
        assert env["OPENSEARCH_SSL_VERIFICATIONMODE"] == "full", name
        ca = env["OPENSEARCH_SSL_CERTIFICATEAUTHORITIES"] or ""
        assert ca.startswith(DASHBOARDS_CONFIG + "/"), ca
        source = secret_mounts(data, service).get(ca)
        assert source and generated_file(source, generated) == generated.folder / "ca.pem", f"{name}: {ca}"


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_no_password_anywhere_in_the_compose_files(path: Path, generated: Generated) -> None:
    data = load(path)
    text = path.read_text(encoding="utf-8")
    assert not any(password in text for password in generated.passwords().values())
    for name, service in services(data).items():
        for key, value in environment(service).items():
            if "PASSWORD" in key:  # only ever `${VAR:?message}`: from the environment, no default
                assert re.fullmatch(rf"\$\{{{PASSWORD_VAR}:\?[^}}]+\}}", value or ""), f"{name} {key}: {value!r}"
        if image_repo(service) == OPENSEARCH_IMAGE:
            command = healthcheck_command(service)
            assert not re.search(r"(?:^|\s)(?:-u|--user|-k|--insecure)(?:\s|$)|Authorization", command), command
    for env in ({}, {PASSWORD_VAR: ""}):
        with pytest.raises(MissingVariable, match=PASSWORD_VAR):
            resolve_all(data, env)
    resolved = resolve_all(data, WITH_PASSWORD)
    for name, service in dashboards_services(resolved).items():
        assert environment(service)["OPENSEARCH_PASSWORD"] == TEST_PASSWORD, name


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_healthchecks_authenticate_with_the_readers_certificate(path: Path, generated: Generated) -> None:
    from cryptography import x509

    assert "cluster:monitor/health" in READER_CLUSTER_PERMISSIONS
    data = load(path)
    for name, service in opensearch_services(data).items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: no shell needed, none used"
        flags = {flag: test[test.index(flag) + 1] for flag in ("--cacert", "--cert", "--key")}
        mounts = secret_mounts(data, service)
        files = {flag: generated_file(mounts[target], generated) for flag, target in flags.items()}
        assert files["--cacert"] == generated.folder / "ca.pem"
        assert files["--key"] == generated.folder / f"{HEALTHCHECK_USER}-key.pem"
        cert = x509.load_pem_x509_certificate(files["--cert"].read_bytes())
        assert cert.subject.rfc4514_string() == f"CN={HEALTHCHECK_USER},O=rsrt"  # clientcert: CN is the user


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_the_node_certificate_covers_the_service_names(path: Path, generated: Generated) -> None:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((generated.folder / "node.pem").read_bytes())
    assert cert.subject.rfc4514_string() == NODE_DN
    names = set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                .get_values_for_type(x509.DNSName))
    data = load(path)
    hosts = {service.get("hostname", name) for name, service in opensearch_services(data).items()}
    for service in dashboards_services(data).values():
        hosts |= {urlsplit(url).hostname for url in json.loads(environment(service)["OPENSEARCH_HOSTS"] or "[]")}
    assert hosts <= names, f"{path.name}: {sorted(hosts - names)} not in the node certificate {sorted(names)}"
    assert hosts <= set(COMPOSE_HOSTS) and "localhost" in names  # the health checks' host


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_security_stays_on_in_the_default_files(path: Path) -> None:
    for name, service in services(load(path)).items():
        env = environment(service)
        for switch in SECURITY_SWITCHES:
            assert (env.get(switch) or "false").lower() != "true", f"{path.name}:{name} sets {switch}"
        if image_repo(service) == DASHBOARDS_IMAGE:
            hosts = json.loads(env["OPENSEARCH_HOSTS"] or "[]")
            assert hosts and all(h.startswith("https://") for h in hosts), hosts


def test_insecure_override_is_labelled_and_turns_security_off_only() -> None:
    text = INSECURE.read_text(encoding="utf-8")
    first = next(line for line in text.splitlines() if line.strip())
    assert first.startswith("#") and "INSECURE" in first, first
    base, override = load(SINGLE), load(INSECURE)
    assert set(services(override)) <= set(services(base)), "the override names services compose.yaml lacks"
    for name, service in services(override).items():
        for key in ("image", "ports", "volumes"):
            assert key not in service, f"the insecure override must not change {name}'s {key}"
    assert override["name"] != base["name"], "must not share the secured project's data volume"

    merged = merge(base, override)
    resolve_all(merged, {})  # Compose resolves after merging: no Dashboards password needed
    node, dashboards = merged["services"]["opensearch"], merged["services"]["opensearch-dashboards"]
    node_env, dash_env = environment(node), environment(dashboards)
    assert node_env["DISABLE_SECURITY_PLUGIN"] == "true"
    assert node_env["DISABLE_INSTALL_DEMO_CONFIG"] == "true"
    assert dash_env["DISABLE_SECURITY_DASHBOARDS_PLUGIN"] == "true"
    assert json.loads(dash_env["OPENSEARCH_HOSTS"] or "[]") == ["http://opensearch:9200"]
    assert not secret_mounts(merged, node) and not secret_mounts(merged, dashboards), "rsrt's files still mounted"
    assert all(not dash_env[key] for key in dash_env if key.startswith("OPENSEARCH_") and key != "OPENSEARCH_HOSTS")
    command = resolve(healthcheck_command(node), {})
    assert "http://localhost:9200/_cluster/health" in command, command
    assert "https" not in command and "-u" not in command and "--cert" not in command, command
    assert dashboards["depends_on"] == {"opensearch": {"condition": "service_healthy"}}
    ports = {name: published_ports(s, {}) for name, s in merged["services"].items()}
    assert ports == {"opensearch": [("127.0.0.1", "9200", "9200")],
                     "opensearch-dashboards": [("127.0.0.1", "5601", "5601")]}, ports


# ------------------------------------------------------------------------------------------------
# Documentation.
# ------------------------------------------------------------------------------------------------


def test_every_variable_is_documented() -> None:
    readme = README.read_text(encoding="utf-8")
    used: set[str] = set()
    for path in ALL_FILES:
        for text in strings(load(path)):
            used |= {name for name, _, _ in interpolations(text)}
            used |= set(escaped_names(text))
    assert PASSWORD_VAR in used and "RSRT_DOCKER_BIND" in used
    undocumented = sorted(name for name in used if not re.search(rf"\b{name}\b", readme))
    assert not undocumented, f"docker/README.md does not mention {undocumented}"
    table = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", readme, flags=re.MULTILINE))
    assert table, "docker/README.md has no variable table"
    assert table == used, f"table rows {sorted(table)} vs variables used {sorted(used)}"


def test_readme_explains_how_rsrt_connects() -> None:
    readme = README.read_text(encoding="utf-8")
    for path in ALL_FILES:
        assert path.name in readme, path.name
    for var in (rsrt_config.ENV_URL, rsrt_config.ENV_USER, rsrt_config.ENV_PASSWORD, rsrt_config.ENV_CA_FILE):
        assert var in readme, var
    for line in ("rsrt node security-config docker/secrets", "--ca-file docker/secrets/ca.pem",
                 f"{rsrt_config.ENV_URL}=https://localhost:9200", f"{rsrt_config.ENV_USER}={READER}",
                 f"{rsrt_config.ENV_URL}=https://localhost:9200,https://localhost:9201,https://localhost:9202"):
        assert line in readme, line
    for user in USERS:
        assert f"`{user}`" in readme, user
    assert f"{rsrt_config.ENV_VERIFY}=false" not in readme, "the CA is rsrt's own: nothing to turn off"
    assert "secrets/" in (DOCKER / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert "mappings/index-template.json" in readme and "_search/pipeline" in readme
    assert DEFAULT_VERSION in readme


# ------------------------------------------------------------------------------------------------
# Docker itself, when it is there.
# ------------------------------------------------------------------------------------------------


def _docker_compose_usable() -> bool:
    """`docker compose version` works and a Docker engine answers `docker info`."""
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        for args in (["compose", "version"], ["info"]):
            if subprocess.run([docker, *args], capture_output=True, timeout=60).returncode != 0:
                return False
    except (OSError, subprocess.TimeoutExpired):
        return False
    return True


def test_files_merge_and_resolve_and_docker_compose_accepts_them_where_it_runs(tmp_path: Path,
                                                                               generated: Generated) -> None:
    """The merge and interpolation always; `docker compose config` only where an engine answers."""
    combinations = [[SINGLE], [CLUSTER], [SINGLE, INSECURE]]
    for files in combinations:  # the YAML checks run everywhere
        merged = load(files[0])
        for extra in files[1:]:
            merged = merge(merged, load(extra))
        resolve_all(merged, WITH_PASSWORD)
    if not _docker_compose_usable():
        return  # no engine here: the YAML checks above and in the other tests are the whole check
    # the files beside a real `security-config` output (never the repository's docker/secrets/)
    docker_dir = generated.folder.parent
    for path in ALL_FILES:
        shutil.copy2(path, docker_dir / path.name)
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("", encoding="utf-8")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RSRT_DOCKER_", PASSWORD_VAR))}

    def compose_config(files: list[Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        args = ["docker", "compose", "--env-file", str(empty_env_file)]
        for path in files:
            args += ["-f", str(docker_dir / path.name)]
        return subprocess.run([*args, "config", "--quiet"], env=env, capture_output=True, text=True,
                              timeout=120)

    for files in combinations:
        result = compose_config(files, {**base_env, **WITH_PASSWORD})
        assert result.returncode == 0, f"{[p.name for p in files]}: {result.stderr}"
    for path in SECURE_FILES:
        result = compose_config([path], base_env)
        assert result.returncode != 0 and PASSWORD_VAR in result.stderr, f"{path.name}: {result.stderr}"
