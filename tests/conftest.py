"""Session fixtures: one real OpenSearch for the whole run, one encoder, shared data paths.

The cluster comes from RSRT_OPENSEARCH_URL when set; else from testcontainers when
RSRT_TEST_BACKEND=docker and a Docker engine answers; else (the default, and CI) the local node
that `rsrt node start` builds from Maven Central. When no cluster can be had the run fails — it
never skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RSRT_SHARED_DIR", REPO.parent / "shared"))
BENCHMARKS = SHARED / "benchmarks"
SAMPLE_IMAGES = SHARED / "images" / "rsicd-sample"


def _docker_engine_answers() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    return subprocess.run([docker, "info"], capture_output=True).returncode == 0


@pytest.fixture(scope="session")
def opensearch_url() -> Iterator[str]:
    """A URL of a real, green OpenSearch 2.19 with k-NN and neural-search."""
    url = os.environ.get("RSRT_OPENSEARCH_URL")
    if url:
        yield url.split(",")[0].rstrip("/")
        return
    if os.environ.get("RSRT_TEST_BACKEND") == "docker":
        if not _docker_engine_answers():
            pytest.fail("RSRT_TEST_BACKEND=docker but no Docker engine answers `docker info`")
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.waiting_utils import wait_for_logs

        container = (
            DockerContainer("opensearchproject/opensearch:2.19.1")
            .with_env("discovery.type", "single-node")
            .with_env("DISABLE_SECURITY_PLUGIN", "true")
            .with_env("OPENSEARCH_JAVA_OPTS", "-Xms1g -Xmx1g")
            .with_exposed_ports(9200)
        )
        container.start()
        try:
            wait_for_logs(container, "started", timeout=180)
            yield f"http://{container.get_container_host_ip()}:{container.get_exposed_port(9200)}"
        finally:
            container.stop()
        return
    from rsrt.search.errors import RsrtError
    from rsrt.search.node import LocalCluster, NodeSettings, free_port_block

    http_port = free_port_block(1, 19200)
    transport_port = free_port_block(1, 19300)
    cluster = LocalCluster(
        # One cluster per pytest process: parallel sessions must not share a data dir or stop each other.
        NodeSettings(name=f"rsrt-test-{os.getpid()}", http_port=http_port, transport_port=transport_port,
                     heap="1g"),
        log=print,
    )
    try:
        cluster.start(fresh=True)
    except RsrtError as exc:
        pytest.fail(f"the local OpenSearch node could not start: {exc}")
    try:
        yield cluster.url
    finally:
        cluster.stop()
        shutil.rmtree(cluster.cluster_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def connection_settings(opensearch_url: str):
    from rsrt.search.config import ConnectionSettings

    return ConnectionSettings.resolve(url=opensearch_url)


@pytest.fixture(scope="session")
def os_client(connection_settings):
    from rsrt.search.client import connect

    client = connect(connection_settings)
    yield client
    client.close()


@pytest.fixture
def index_name(os_client) -> Iterator[str]:
    """A unique index name, deleted (with whatever alias/versions it grew) after the test."""
    name = f"rsrt-test-{uuid.uuid4().hex[:10]}"
    yield name
    # The node refuses wildcard deletes (action.destructive_requires_name): name each index.
    found = os_client.indices.get(index=f"{name}*", params={"expand_wildcards": "all"})
    for concrete in found:
        os_client.indices.delete(index=concrete)


@pytest.fixture(scope="session")
def cli_env(opensearch_url: str) -> dict[str, str]:
    """Environment for running the real `rsrt` command in a subprocess against the test cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSRT_OPENSEARCH_")}
    env["RSRT_OPENSEARCH_URL"] = opensearch_url
    return env


def run_cli(args: list[str], env: dict[str, str], input_text: str | None = None, timeout: float = 600):
    """Run `rsrt …` as a user would, in a real subprocess."""
    rsrt = shutil.which("rsrt", path=str(Path(sys.executable).parent)) or "rsrt"
    return subprocess.run([rsrt, *args], env=env, capture_output=True, text=True, input=input_text,
                          timeout=timeout)


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run an ASGI `app` under a real uvicorn on a free loopback port (the socket is bound first: no race)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


@contextlib.contextmanager
def serve_subprocess(args: list[str], env: dict[str, str], log_path: Path, timeout: float = 180) -> Iterator[str]:
    """`rsrt serve ARGS` as a real subprocess on a port the OS picks (`--port 0`: no race); yields its base
    URL once uvicorn says it runs (after the encoder warm-up) and `/` answers. Fails the test, with the
    server's log, when it exits or does not come up."""
    import re

    import httpx

    rsrt = shutil.which("rsrt", path=str(Path(sys.executable).parent)) or "rsrt"
    with log_path.open("w") as log:
        process = subprocess.Popen([rsrt, "serve", "--port", "0", *args, "--log-level", "info"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"Uvicorn running on (http://[\w.]+:\d+)", log_path.read_text())
            if found:
                url = found.group(1)
                assert httpx.get(f"{url}/", timeout=30).status_code == 200, log_path.read_text()
                break
            if process.poll() is not None:
                pytest.fail(f"rsrt serve exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"rsrt serve did not start within {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(20)


def build_index(os_client, name: str, records, ledger_dir: Path) -> None:
    """Create an rsrt index and ingest `records` through the real pipeline (the shared test setup)."""
    from rsrt.ingest.config import IngestConfig
    from rsrt.ingest.ledger import Ledger
    from rsrt.ingest.pipeline import IngestPipeline
    from rsrt.search.encoder import get_encoder
    from rsrt.search.index import create_index

    records = list(records)
    encoder = get_encoder()
    create_index(os_client, encoder.info(), name)
    ledger = Ledger(ledger_dir)
    stats = IngestPipeline(os_client, encoder, ledger, IngestConfig(index=name)).run(records)
    ledger.close()
    assert (stats.ingested, stats.failed, stats.quarantined) == (len(records), 0, 0)
    os_client.indices.refresh(index=name)


@dataclass
class SecureNode:
    """A local node started by `rsrt node start --secure`: TLS with its own CA, basic auth, rsrt's roles."""

    cluster: Any
    passwords: dict[str, str]
    outputs: list[str]  # every CLI output after the first start (which shows the passwords once)

    @property
    def url(self) -> str:
        return self.cluster.url

    @property
    def ca_file(self) -> str:
        return str(self.cluster.security.ca_file)

    def client(self, user: str | None, password: str | None = None):
        from rsrt.search.client import connect
        from rsrt.search.config import ConnectionSettings

        password = self.passwords.get(user, "") if password is None and user else password
        return connect(ConnectionSettings.resolve(url=self.url, user=user, password=password,
                                                  ca_file=self.ca_file, env={}))

    def env(self, user: str | None, base: dict[str, str]) -> dict[str, str]:
        """The environment a user of this node runs `rsrt` with: URL, CA and (when given) basic auth."""
        env = {k: v for k, v in base.items() if not k.startswith("RSRT_OPENSEARCH_")}
        env.update(RSRT_OPENSEARCH_URL=self.url, RSRT_OPENSEARCH_CA_FILE=self.ca_file)
        if user:
            env.update(RSRT_OPENSEARCH_USER=user, RSRT_OPENSEARCH_PASSWORD=self.passwords[user])
        return env

    def run(self, args: list[str], env: dict[str, str], **kwargs: Any):
        """`rsrt …` against this node; the output is kept for the no-secrets-anywhere check."""
        result = run_cli(args, env, **kwargs)
        self.outputs.append(result.stdout + result.stderr)
        return result


@pytest.fixture(scope="session")
def secure_node() -> Iterator[SecureNode]:
    """One secure node per pytest process (its own name, ports and data dir, removed at the end)."""
    from rsrt.search._node.security import USERS
    from rsrt.search.node import LocalCluster, NodeSettings, free_port_block

    name = f"rsrt-secure-{os.getpid()}"
    http_port, transport_port = free_port_block(1, 19600), free_port_block(1, 19700)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSRT_OPENSEARCH_")}
    args = ["node", "start", "--secure", "--name", name, "--http-port", str(http_port),
            "--transport-port", str(transport_port), "--heap", "1g", "--fresh"]
    cluster = LocalCluster(NodeSettings(name=name, http_port=http_port, transport_port=transport_port,
                                        secure=True))
    try:
        first = run_cli(args, env)
        assert first.returncode == 0, first.stdout + first.stderr
        passwords = cluster.security.passwords()
        shown = first.stdout + first.stderr
        assert sorted(passwords) == sorted(USERS)
        assert all(shown.count(password) == 1 for password in passwords.values()), "shown exactly once"
        again = run_cli(args[:-1], env)  # already running: no new passwords, nothing shown
        status = run_cli(["node", "status", "--name", name], env)
        assert again.returncode == 0 and status.returncode == 0, again.stderr + status.stderr
        yield SecureNode(cluster, passwords, [again.stdout + again.stderr, status.stdout + status.stderr])
    finally:
        cluster.stop()
        shutil.rmtree(cluster.cluster_dir, ignore_errors=True)
