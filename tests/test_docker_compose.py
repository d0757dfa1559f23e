"""The Docker Compose files in docker/, checked as data: no Docker engine is needed.

The files are parsed with PyYAML and `${…}` is resolved the way Compose does (defaults, required
variables, `$$` escapes), so ports, heap and password handling are checked as Compose would see
them. The single node is compared with the settings the local Maven-built node writes
(`search/node.py`), the image tags with `rsrt.search._node.DEFAULT_VERSION`. When `docker compose`
exists and a Docker engine answers, `docker compose config` validates the files as well.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rsrt.search import config as rsrt_config
from rsrt.search._node import DEFAULT_VERSION
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
PASSWORD_VAR = "OPENSEARCH_INITIAL_ADMIN_PASSWORD"
TEST_PASSWORD = "Compose-Check-7!qZ"  # only ever fed to the resolver / `docker compose config`
WITH_PASSWORD = {PASSWORD_VAR: TEST_PASSWORD}
SECURITY_SWITCHES = ("DISABLE_SECURITY_PLUGIN", "DISABLE_INSTALL_DEMO_CONFIG",
                     "DISABLE_SECURITY_DASHBOARDS_PLUGIN", "plugins.security.disabled")
TOP_LEVEL_KEYS = {"name", "services", "volumes", "networks", "configs", "secrets", "include"}

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


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
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
        if key == "environment":
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
        # The password is read inside the container ($$ escape), never written into the config.
        assert f'-u "admin:${{{PASSWORD_VAR}}}"' in resolved, f"{name}: {resolved}"
        assert TEST_PASSWORD not in resolved
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
# Security: on by default, the admin password required, the insecure override clearly separate.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SECURE_FILES, ids=lambda p: p.name)
def test_admin_password_is_required_and_has_no_default(path: Path) -> None:
    data = load(path)
    uses = [(name, op, arg) for text in strings(data) for name, op, arg in interpolations(text)
            if name == PASSWORD_VAR]
    assert uses, f"{path.name} never asks for {PASSWORD_VAR}"
    for name, op, arg in uses:
        assert op == ":?" and arg.strip(), f"{path.name}: ${{{name}{op}{arg}}} must be ${{{name}:?message}}"
    for name, service in opensearch_services(data).items():
        value = environment(service).get(PASSWORD_VAR) or ""
        assert re.fullmatch(rf"\$\{{{PASSWORD_VAR}:\?[^}}]+\}}", value), f"{name}: {value!r}"
    for env in ({}, {PASSWORD_VAR: ""}):
        with pytest.raises(MissingVariable, match=PASSWORD_VAR):
            resolve_all(data, env)
    resolved = resolve_all(data, WITH_PASSWORD)
    for name, service in opensearch_services(resolved).items():
        assert environment(service)[PASSWORD_VAR] == TEST_PASSWORD, name


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
    resolve_all(merged, {})  # Compose resolves after merging: no admin password needed
    node, dashboards = merged["services"]["opensearch"], merged["services"]["opensearch-dashboards"]
    node_env, dash_env = environment(node), environment(dashboards)
    assert node_env["DISABLE_SECURITY_PLUGIN"] == "true"
    assert node_env["DISABLE_INSTALL_DEMO_CONFIG"] == "true"
    assert dash_env["DISABLE_SECURITY_DASHBOARDS_PLUGIN"] == "true"
    assert json.loads(dash_env["OPENSEARCH_HOSTS"] or "[]") == ["http://opensearch:9200"]
    command = resolve(healthcheck_command(node), {})
    assert "http://localhost:9200/_cluster/health" in command, command
    assert "https" not in command and "-u" not in command, command
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
    for var in (rsrt_config.ENV_URL, rsrt_config.ENV_USER, rsrt_config.ENV_PASSWORD,
                rsrt_config.ENV_VERIFY, rsrt_config.ENV_CA_FILE):
        assert var in readme, var
    for line in (f"{rsrt_config.ENV_URL}=https://localhost:9200", f"{rsrt_config.ENV_USER}=admin",
                 f"{rsrt_config.ENV_VERIFY}=false",
                 f"{rsrt_config.ENV_URL}=https://localhost:9200,https://localhost:9201,https://localhost:9202"):
        assert line in readme, line
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


def test_compose_accepts_the_files(tmp_path: Path) -> None:
    combinations = [[SINGLE], [CLUSTER], [SINGLE, INSECURE]]
    for files in combinations:  # the YAML checks run everywhere
        merged = load(files[0])
        for extra in files[1:]:
            merged = merge(merged, load(extra))
        resolve_all(merged, WITH_PASSWORD)
    if not _docker_compose_usable():
        return  # no engine here: the YAML checks above and in the other tests are the whole check
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("", encoding="utf-8")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("RSRT_DOCKER_", PASSWORD_VAR))}

    def compose_config(files: list[Path], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        args = ["docker", "compose", "--env-file", str(empty_env_file)]
        for path in files:
            args += ["-f", str(path)]
        return subprocess.run([*args, "config", "--quiet"], env=env, capture_output=True, text=True,
                              timeout=120)

    for files in combinations:
        result = compose_config(files, {**base_env, **WITH_PASSWORD})
        assert result.returncode == 0, f"{[p.name for p in files]}: {result.stderr}"
    for path in SECURE_FILES:
        result = compose_config([path], base_env)
        assert result.returncode != 0 and PASSWORD_VAR in result.stderr, f"{path.name}: {result.stderr}"
