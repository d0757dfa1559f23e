"""The embedded default: a real local OpenSearch node (or small cluster) on loopback, from Maven Central.

`provision()` (in `rsrt.search._node.provision`, re-exported here) assembles the distribution once
into a cache; `LocalCluster` starts, checks and stops nodes from it. Nodes run as a non-root user
(OpenSearch refuses root), created when needed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._node import DEFAULT_VERSION, DISTRIBUTIONS
from ._node.provision import (
    ENV_HOME,
    READY_MARKER,
    Log,
    _quiet,
    default_home,
    dist_dir,
    find_java_home,
    provision,
)
from ._node.security import SecurityFiles, sync_roles
from ._node.security import http_json as _http_json
from .errors import ConfigError, NodeError

__all__ = [
    "DEFAULT_RUN_AS",
    "ENV_HOME",
    "ENV_RUN_AS",
    "READY_MARKER",
    "LocalCluster",
    "Log",
    "NodeSettings",
    "NodeState",
    "default_home",
    "dist_dir",
    "find_java_home",
    "free_port_block",
    "provision",
]

ENV_RUN_AS = "RSRT_NODE_USER"
DEFAULT_RUN_AS = "rsrt"

# Connectors may call only these endpoints; loopback (rsrt's own `/v1/embeddings`) by default. Dynamic:
# widen it per cluster with PUT _cluster/settings, never to everything.
TRUSTED_CONNECTOR_ENDPOINTS = (r"^https?://127\.0\.0\.1(:[0-9]+)?/.*$", r"^https?://localhost(:[0-9]+)?/.*$")

# ml-commons on a dev node: run models on data nodes, no memory circuit breakers in the way, local
# model upload by chunks, and HTTP connectors to a loopback endpoint (a private IP).
ML_COMMONS_SETTINGS: dict[str, str] = {
    "plugins.ml_commons.only_run_on_ml_node": "false",
    "plugins.ml_commons.native_memory_threshold": "100",
    "plugins.ml_commons.jvm_heap_memory_threshold": "100",
    "plugins.ml_commons.allow_registering_model_via_local_file": "true",
    "plugins.ml_commons.connector.private_ip_enabled": "true",
    "plugins.ml_commons.trusted_connector_endpoints_regex":
        "[" + ", ".join(json.dumps(p) for p in TRUSTED_CONNECTOR_ENDPOINTS) + "]",
}


@dataclass
class NodeSettings:
    """How to run the local cluster; everything has a default that works on a fresh machine."""

    name: str = "rsrt"
    nodes: int = 1
    http_port: int = 9200
    transport_port: int = 9300
    heap: str = "1g"
    version: str = DEFAULT_VERSION
    home: Path = field(default_factory=default_home)
    run_as: str = field(default_factory=lambda: os.environ.get(ENV_RUN_AS, DEFAULT_RUN_AS))
    start_timeout: float = 180.0
    secure: bool = False  # TLS + basic auth (security plugin); see rsrt.search._node.security

    def validate(self) -> None:
        if not 1 <= self.nodes <= 9:
            raise ConfigError(f"--nodes must be between 1 and 9, not {self.nodes}")
        for label, port in (("--http-port", self.http_port), ("--transport-port", self.transport_port)):
            if not 1024 <= port <= 65535 - self.nodes:
                raise ConfigError(f"{label} {port} is out of range (1024–65535)")
        if not self.heap[:-1].isdigit() or self.heap[-1].lower() not in "mg":
            raise ConfigError(f"--heap {self.heap!r} must look like 512m or 2g")
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"cluster name {self.name!r} may hold only letters, digits, - and _")


@dataclass
class NodeState:
    """What `start` leaves behind for `status`, `logs` and `stop`."""

    name: str
    version: str
    nodes: int
    http_ports: list[int]
    pids: list[int]
    url: str
    started: float
    startup_seconds: float = 0.0
    secure: bool = False
    ca_file: str | None = None  # the CA clients verify the node with (secure only)
    users: list[str] = field(default_factory=list)  # names only: passwords stay in the 0600 file


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(count: int, start: int = 19200) -> int:
    """The first port p ≥ start such that p … p+count-1 are all free (for tests and parallel runs)."""
    port = start
    while port < 65000:
        if all(_port_free(port + i) for i in range(count)):
            return port
        port += count
    raise NodeError("no free port block found on 127.0.0.1")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True


def _ensure_user(name: str) -> pwd.struct_passwd:
    """Root only: the unprivileged account the node runs as, created (system, no login) if missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd")
    if not useradd:
        raise NodeError(f"running as root and user {name!r} does not exist; create it or set {ENV_RUN_AS}")
    proc = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 and "already exists" not in proc.stderr:
        raise NodeError(f"could not create user {name!r} for the node: {proc.stderr.strip()}")
    return pwd.getpwnam(name)


class LocalCluster:
    """A cluster of 1..n real OpenSearch processes on 127.0.0.1, sharing one cached distribution."""

    def __init__(self, settings: NodeSettings | None = None, log: Log = _quiet) -> None:
        self.settings = settings or NodeSettings()
        self.settings.validate()
        self.log = log
        self.new_passwords: dict[str, str] | None = None  # set by a start that made them: show once

    # paths -----------------------------------------------------------------------------------------
    @property
    def cluster_dir(self) -> Path:
        return self.settings.home / "clusters" / self.settings.name

    @property
    def state_file(self) -> Path:
        return self.cluster_dir / "state.json"

    def node_dir(self, index: int) -> Path:
        return self.cluster_dir / f"node-{index}"

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.secure else "http"
        return f"{scheme}://127.0.0.1:{self.settings.http_port}"

    @property
    def security(self) -> SecurityFiles:
        return SecurityFiles(self.cluster_dir)

    def _probe(self, url: str) -> dict:  # plain, or TLS with the cluster's CA and admin basic auth
        return _http_json(url, self.security if url.startswith("https:") else None)

    def log_file(self, index: int = 0) -> Path:
        return self.node_dir(index) / "logs" / f"{self.settings.name}.log"

    # state -----------------------------------------------------------------------------------------
    def state(self) -> NodeState | None:
        if not self.state_file.exists():
            return None
        try:
            return NodeState(**json.loads(self.state_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            return None

    def running_pids(self) -> list[int]:
        state = self.state()
        return [pid for pid in (state.pids if state else []) if _pid_alive(pid)]

    def health(self, url: str | None = None) -> dict | None:
        try:
            return self._probe(f"{url or self.url}/_cluster/health")
        except (OSError, ValueError):
            return None

    # lifecycle -------------------------------------------------------------------------------------
    def start(self, fresh: bool = False) -> NodeState:
        """Start every node and wait for green; reuse the cached distribution and existing data."""
        s = self.settings
        state = self.state()
        if state and self.running_pids():
            health = self.health(state.url)
            if health and health.get("status") in {"green", "yellow"}:
                self.log(f"cluster {s.name!r} is already running at {state.url}")
                return state
            raise NodeError(
                f"cluster {s.name!r} has live processes {self.running_pids()} but is not healthy; "
                "run `rsrt node stop` first"
            )
        dist = provision(s.home, s.version, self.log, secure=s.secure)
        if fresh and self.cluster_dir.exists():
            shutil.rmtree(self.cluster_dir)
        previous = self._recorded_layout()
        if previous is not None and previous != (s.nodes, s.secure):
            raise NodeError(
                f"cluster {s.name!r} was created with {previous[0]} node(s), secure={previous[1]}, not "
                f"{s.nodes}, secure={s.secure}; "
                "use another --name or start with --fresh (deletes its data)"
            )
        for i in range(s.nodes):
            for port in (s.http_port + i, s.transport_port + i):
                if not _port_free(port):
                    raise NodeError(
                        f"port {port} on 127.0.0.1 is in use (another OpenSearch?); "
                        "pick --http-port/--transport-port"
                    )
        account = _ensure_user(s.run_as) if os.geteuid() == 0 else None
        java_home = find_java_home()
        t0 = time.monotonic()
        self.new_passwords = self.security.ensure() if s.secure else None
        extra = self.security.state_fields() if s.secure else {}
        pids: list[int] = []
        try:
            for i in range(s.nodes):
                pids.append(self._spawn(dist, i, java_home, account))
            self._write_state(NodeState(s.name, s.version, s.nodes, [s.http_port + i for i in range(s.nodes)],
                                        pids, self.url, time.time(), **extra))
            self._wait_green(pids, t0)
            if s.secure:
                sync_roles(self.url, self.security)
        except BaseException:
            self._terminate(pids)
            self.state_file.unlink(missing_ok=True)
            raise
        state = NodeState(s.name, s.version, s.nodes, [s.http_port + i for i in range(s.nodes)], pids,
                          self.url, time.time(), round(time.monotonic() - t0, 1), **extra)
        self._write_state(state)
        (self.cluster_dir / "layout.json").write_text(json.dumps({"nodes": s.nodes, "secure": s.secure}))
        self.log(f"cluster {s.name!r} green at {self.url} with {s.nodes} node(s) in {state.startup_seconds} s")
        return state

    def stop(self, timeout: float = 60.0) -> list[int]:
        """Stop every node process of this cluster; returns the pids that were stopped."""
        state = self.state()
        pids = self.running_pids()
        self._terminate(pids, timeout)
        if state:
            self.state_file.unlink(missing_ok=True)
        return pids

    def stop_node(self, index: int, timeout: float = 60.0) -> int:
        """Stop one node (for failure tests); the state keeps the others."""
        state = self.state()
        if not state or index >= len(state.pids):
            raise NodeError(f"cluster {self.settings.name!r} has no running node {index}")
        pid = state.pids[index]
        self._terminate([pid], timeout)
        return pid

    def start_node(self, index: int) -> int:
        """Start one stopped node again with its own data and config (after `stop_node` or a crash); the
        state records its new pid."""
        state = self.state()
        if state is None or index >= len(state.pids):
            raise NodeError(f"cluster {self.settings.name!r} has no node {index}")
        if _pid_alive(state.pids[index]):
            raise NodeError(f"node {index} of {self.settings.name!r} is still running (pid {state.pids[index]})")
        s = self.settings
        dist = provision(s.home, s.version, self.log, secure=s.secure)
        account = _ensure_user(s.run_as) if os.geteuid() == 0 else None
        pid = self._spawn(dist, index, find_java_home(), account)
        pids = list(state.pids)
        pids[index] = pid
        self._write_state(dataclasses.replace(state, pids=pids))
        return pid

    # internals -------------------------------------------------------------------------------------
    def _recorded_layout(self) -> tuple[int, bool] | None:  # (nodes, secure) as created
        path = self.cluster_dir / "layout.json"
        if not path.exists():
            return None
        try:
            layout = json.loads(path.read_text())
            return int(layout["nodes"]), bool(layout.get("secure", False))
        except (ValueError, KeyError, TypeError):
            return None

    def _write_state(self, state: NodeState) -> None:
        self.cluster_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")

    def _node_config(self, index: int) -> str:
        s = self.settings
        node_dir = self.node_dir(index)
        lines = [
            f"cluster.name: {s.name}",
            f"node.name: {s.name}-{index}",
            f"path.data: {node_dir / 'data'}",
            f"path.logs: {node_dir / 'logs'}",
            "network.host: 127.0.0.1",
            f"http.port: {s.http_port + index}",
            f"transport.port: {s.transport_port + index}",
            # A developer laptop with a full disk must not flip indices to read-only.
            "cluster.routing.allocation.disk.threshold_enabled: false",
            "action.destructive_requires_name: true",
        ]
        if DISTRIBUTIONS[s.version].ml_runtime is not None:
            lines += [f"{key}: {value}" for key, value in ML_COMMONS_SETTINGS.items()]
        if s.nodes == 1:
            lines.append("discovery.type: single-node")
        else:
            seeds = ", ".join(f'"127.0.0.1:{s.transport_port + i}"' for i in range(s.nodes))
            masters = ", ".join(f'"{s.name}-{i}"' for i in range(s.nodes))
            lines += [f"discovery.seed_hosts: [{seeds}]", f"cluster.initial_cluster_manager_nodes: [{masters}]"]
        return "\n".join(lines) + "\n"

    def _ml_jvm_options(self, dist: Path, node_dir: Path) -> list[str]:
        """System properties that keep ml-commons' DJL offline (env vars are blocked by the security manager).

        libtorch comes from the distribution (PYTORCH_LIBRARY_PATH). DJL's engine cache must be writable
        (it extracts the tokenizers library there), so it is per node, seeded with the JNI library under
        the name DJL would otherwise download it to. ONNX Runtime extracts itself to java.io.tmpdir.
        """
        runtime = DISTRIBUTIONS[self.settings.version].ml_runtime
        if runtime is None or not (dist / runtime.libtorch / "libtorch.so").exists():
            return []
        engine_cache = node_dir / "data" / "djl"
        jni = engine_cache / runtime.jni_cache_path
        jni.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(dist / runtime.jni / "libdjl_torch.so", jni)
        return [
            f"-DPYTORCH_LIBRARY_PATH={dist / runtime.libtorch}",
            f"-DPYTORCH_FLAVOR={runtime.flavor}",
            f"-DENGINE_CACHE_DIR={engine_cache}",
            "-Dai.djl.offline=true",
        ]

    def _spawn(self, dist: Path, index: int, java_home: Path, account: pwd.struct_passwd | None) -> int:
        s = self.settings
        node_dir = self.node_dir(index)
        config = node_dir / "config"
        for sub in ("data", "logs", "tmp"):
            (node_dir / sub).mkdir(parents=True, exist_ok=True)
        if config.exists():
            keystore = config / "opensearch.keystore"
            kept = keystore.read_bytes() if keystore.exists() else None
            shutil.rmtree(config)
        else:
            kept = None
        shutil.copytree(dist / "config", config)
        if kept is not None:
            (config / "opensearch.keystore").write_bytes(kept)
        (config / "opensearch.yml").write_text(self._node_config(index), encoding="utf-8")
        # jvm.options names logs/ and data relative to the (read-only, shared) distribution: point
        # them at this node's own folders.
        jvm = (config / "jvm.options").read_text(encoding="utf-8")
        jvm = jvm.replace("file=logs/", f"file={node_dir / 'logs'}/").replace(
            "ErrorFile=logs/", f"ErrorFile={node_dir / 'logs'}/").replace(
            "HeapDumpPath=data", f"HeapDumpPath={node_dir / 'data'}")
        (config / "jvm.options").write_text(jvm, encoding="utf-8")
        (config / "jvm.options.d").mkdir(exist_ok=True)
        (config / "jvm.options.d" / "rsrt-heap.options").write_text(f"-Xms{s.heap}\n-Xmx{s.heap}\n")
        ml_options = self._ml_jvm_options(dist, node_dir)
        if ml_options:
            (config / "jvm.options.d" / "rsrt-ml.options").write_text("\n".join(ml_options) + "\n")
        if s.secure:  # TLS material and the security config; then the whole config dir owner-only
            with (config / "opensearch.yml").open("a", encoding="utf-8") as handle:
                handle.write("\n".join(self.security.install(config)) + "\n")
        if account is not None:
            for path in [self.settings.home, self.cluster_dir.parent, self.cluster_dir]:
                path.chmod(0o755)
            for path in [node_dir, *node_dir.rglob("*")]:
                os.chown(path, account.pw_uid, account.pw_gid)
        pid_file = node_dir / "opensearch.pid"
        pid_file.unlink(missing_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(node_dir),
            "OPENSEARCH_JAVA_HOME": str(java_home),
            "OPENSEARCH_PATH_CONF": str(config),
            "OPENSEARCH_TMPDIR": str(node_dir / "tmp"),
        }
        stdout = open(node_dir / "logs" / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        kwargs: dict = {}
        if account is not None:
            kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        try:
            proc = subprocess.Popen(
                [str(dist / "bin" / "opensearch"), "-p", str(pid_file)],
                env=env, cwd=node_dir, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                start_new_session=True, **kwargs,
            )
        finally:
            stdout.close()
        self.log(f"started node {s.name}-{index} (pid {proc.pid}, http {s.http_port + index})")
        return proc.pid

    def _wait_green(self, pids: list[int], t0: float) -> None:
        s = self.settings
        deadline = t0 + s.start_timeout
        while time.monotonic() < deadline:
            dead = [pid for pid in pids if not _pid_alive(pid)]
            if dead:
                raise NodeError(f"OpenSearch exited during start-up:\n{self._log_tail()}")
            health = self.health()
            if health and health.get("number_of_nodes") == s.nodes:
                if health.get("status") == "green":
                    return
                # One node can never place replicas: yellow with every primary active is its green.
                if s.nodes == 1 and health.get("status") == "yellow" and self._primaries_active():
                    self.log("cluster is yellow: some indices ask for replicas a single node cannot hold")
                    return
            time.sleep(0.5)
        raise NodeError(f"OpenSearch was not green within {s.start_timeout:.0f} s:\n{self._log_tail()}")

    def _primaries_active(self) -> bool:
        try:
            health = self._probe(f"{self.url}/_cluster/health?level=indices")
        except (OSError, ValueError):
            return False
        return all(index.get("status") != "red" for index in health.get("indices", {}).values()) and \
            health.get("initializing_shards", 0) == 0

    def _log_tail(self, lines: int = 25) -> str:
        chunks = []
        for i in range(self.settings.nodes):
            for path in (self.node_dir(i) / "logs" / "stdout.log", self.log_file(i)):
                if path.exists():
                    tail = path.read_text(errors="replace").splitlines()[-lines:]
                    chunks.append(f"--- {path}\n" + "\n".join(tail))
                    break
        return "\n".join(chunks) or "(no log written)"

    def _terminate(self, pids: list[int], timeout: float = 60.0) -> None:
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            except PermissionError:
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for pid in pids:
            while _pid_alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.2)
            if _pid_alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _reap(pid)

    def follow_log(self, index: int = 0, lines: int = 50, follow: bool = False) -> Iterator[str]:
        """The node's main log, as `tail` or `tail -f` would show it."""
        path = self.log_file(index)
        if not path.exists():
            raise NodeError(f"no log yet at {path}; has the node been started?")
        with path.open(errors="replace") as handle:
            yield from handle.readlines()[-lines:]
            while follow:
                line = handle.readline()
                if line:
                    yield line
                else:
                    time.sleep(0.5)


def _reap(pid: int) -> None:
    """Collect our own child's exit status so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


if __name__ == "__main__":  # pragma: no cover - handy for debugging provisioning by hand
    print(provision(log=print), file=sys.stderr)
