"""The foundation: a real local OpenSearch node with the plugins and modules rsrt stands on."""

from __future__ import annotations

import http.server
import json
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import run_cli
from rsrt.search._node.provision import _install_order
from rsrt.search.client import (
    REQUIRED_MODULES,
    REQUIRED_PLUGINS,
    ClusterInventory,
    connect,
    inspect_cluster,
    require_cluster,
)
from rsrt.search.config import ConnectionSettings
from rsrt.search.errors import ClusterError, ConfigError, NodeError
from rsrt.search.node import LocalCluster, NodeSettings, _pid_alive, free_port_block, provision

pytestmark = pytest.mark.integration


def test_cluster_has_the_plugins_and_modules_rsrt_needs(os_client, connection_settings):
    inventory = inspect_cluster(os_client, connection_settings)
    assert inventory.version.startswith("2.19"), inventory.version
    assert {"opensearch-knn", "opensearch-neural-search", "opensearch-ml", "opensearch-job-scheduler"} <= set(
        inventory.plugins)
    assert {"analysis-common", "lang-painless", "mapper-extras", "ingest-common", "reindex"} <= set(inventory.modules)
    assert inventory.missing(REQUIRED_PLUGINS, REQUIRED_MODULES) == []
    assert inventory.has_neural_search
    assert inventory.has_ml_commons


def test_ml_commons_is_optional_for_a_users_cluster():
    """A foreign cluster without ml-commons is still usable: rsrt falls back to client embedding."""
    assert "opensearch-ml" not in REQUIRED_PLUGINS
    bare = ClusterInventory("c", "2.19.1", "opensearch", "green", 1, plugins={"opensearch-knn": "2.19.1.0"},
                            modules={"analysis-common": "", "lang-painless": ""})
    assert bare.missing() == [] and not bare.has_ml_commons


def test_local_node_is_configured_for_ml_commons(os_client):
    settings = os_client.cluster.get_settings(include_defaults=True, flat_settings=True)
    values = {**settings["defaults"], **settings["persistent"], **settings["transient"]}
    assert values["plugins.ml_commons.only_run_on_ml_node"] == "false"
    assert values["plugins.ml_commons.allow_registering_model_via_local_file"] == "true"
    assert values["plugins.ml_commons.connector.private_ip_enabled"] == "true"
    trusted = values["plugins.ml_commons.trusted_connector_endpoints_regex"]
    assert trusted and all("127" in p or "localhost" in p for p in trusted), trusted  # loopback only
    jvm = os_client.nodes.info(metric="jvm")["nodes"]
    for node in jvm.values():
        args = node["jvm"]["input_arguments"]
        assert any(a.startswith("-DPYTORCH_LIBRARY_PATH=") for a in args), args
        assert any(a.startswith("-DENGINE_CACHE_DIR=") for a in args), args


def test_delete_by_query_works(os_client, index_name):
    """The reindex module: ml-commons deletes a model's chunks with delete-by-query."""
    _knn_text_index(os_client, index_name)
    result = os_client.delete_by_query(index=index_name, body={"query": {"match": {"text": "airplane"}}},
                                       params={"refresh": "true"})
    assert result["deleted"] == 1
    assert os_client.count(index=index_name)["count"] == 2


def test_missing_plugin_is_named(connection_settings):
    with pytest.raises(ClusterError, match="lacks plugin opensearch-security"):
        require_cluster(connection_settings, plugins=[*REQUIRED_PLUGINS, "opensearch-security"])


def _knn_text_index(client, name: str) -> None:
    client.indices.create(index=name, body={
        "settings": {"index": {"knn": True, "number_of_shards": 1, "number_of_replicas": 0}},
        "mappings": {"properties": {
            "text": {"type": "text", "analyzer": "english"},
            "vec": {"type": "knn_vector", "dimension": 3,
                    "method": {"name": "hnsw", "engine": "lucene", "space_type": "cosinesimil"}},
        }},
    })
    docs = {
        "harbour": ("Two ships are moored at the gray harbour", [1.0, 0.1, 0.0]),
        "airport": ("An airplane parks beside the runway", [0.0, 1.0, 0.1]),
        "forest": ("Dense green trees cover the hills", [0.1, 0.0, 1.0]),
    }
    for doc_id, (text, vec) in docs.items():
        client.index(index=name, id=doc_id, body={"text": text, "vec": vec})
    client.indices.refresh(index=name)


def test_knn_and_english_match_queries(os_client, index_name):
    _knn_text_index(os_client, index_name)
    knn = os_client.search(index=index_name, body={"query": {"knn": {"vec": {"vector": [0.9, 0.2, 0.0], "k": 2}}}})
    assert knn["hits"]["hits"][0]["_id"] == "harbour"
    # "ship" + "moor" only match through the english analyzer's stemming of "ships"/"moored".
    match = os_client.search(index=index_name, body={"query": {"match": {"text": "ship moor"}}})
    assert [h["_id"] for h in match["hits"]["hits"]] == ["harbour"]


@pytest.mark.parametrize("processor", [
    {"normalization-processor": {"normalization": {"technique": "min_max"},
                                 "combination": {"technique": "arithmetic_mean",
                                                 "parameters": {"weights": [0.3, 0.7]}}}},
    {"score-ranker-processor": {"combination": {"technique": "rrf", "parameters": {"rank_constant": 60}}}},
])
def test_hybrid_query_through_search_pipeline_fuses(os_client, index_name, processor):
    _knn_text_index(os_client, index_name)
    pipeline = f"{index_name}-pipeline"
    os_client.transport.perform_request("PUT", f"/_search/pipeline/{pipeline}",
                                        body={"phase_results_processors": [processor]})
    try:
        body = {"query": {"hybrid": {"queries": [
            {"match": {"text": "airplane runway"}},
            {"knn": {"vec": {"vector": [1.0, 0.0, 0.0], "k": 3}}},
        ]}}}
        result = os_client.search(index=index_name, body=body, params={"search_pipeline": pipeline})
        ids = [h["_id"] for h in result["hits"]["hits"]]
        # Fused: the lexical winner and the dense winner are both on top; the third doc only from kNN.
        assert set(ids[:2]) == {"airport", "harbour"}
        assert set(ids) == {"airport", "harbour", "forest"}
        scores = [h["_score"] for h in result["hits"]["hits"]]
        assert scores == sorted(scores, reverse=True)
        assert max(scores) <= 1.0  # normalised / RRF scores, not raw BM25
    finally:
        os_client.transport.perform_request("DELETE", f"/_search/pipeline/{pipeline}")


def test_node_status_cli_reports_plugins(cli_env):
    result = run_cli(["node", "status", "--name", "rsrt-none"], cli_env)
    assert result.returncode == 0, result.stderr
    for expected in ("opensearch-knn", "opensearch-neural-search", "opensearch-ml", "analysis-common",
                     "lang-painless", "reindex", "ml-commons:  yes"):
        assert expected in result.stdout


def test_unreachable_cluster_is_one_clear_line(cli_env):
    port = free_port_block(1, 29200)
    env = {**cli_env, "RSRT_OPENSEARCH_URL": f"http://127.0.0.1:{port}"}
    result = run_cli(["node", "status", "--name", "rsrt-none"], env)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach OpenSearch at")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


class _Rejecting(http.server.BaseHTTPRequestHandler):
    """A real HTTP server that answers like a secured cluster given wrong credentials."""

    seen_auth: list[str] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        body = json.dumps({"error": "Unauthorized", "status": 401}).encode()
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="OpenSearch Security"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_wrong_credentials_are_reported_and_password_never_printed(cli_env):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Rejecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        secret = "s3cr3t-Pa55word"
        env = {**cli_env, "RSRT_OPENSEARCH_URL": f"http://127.0.0.1:{server.server_port}",
               "RSRT_OPENSEARCH_USER": "admin", "RSRT_OPENSEARCH_PASSWORD": secret}
        result = run_cli(["node", "status", "--name", "rsrt-none"], env)
        assert result.returncode == 1
        assert "rejected the credentials" in result.stderr
        assert secret not in result.stdout + result.stderr
        assert _Rejecting.seen_auth and _Rejecting.seen_auth[0].startswith("Basic ")
    finally:
        server.shutdown()


def test_settings_hide_password_and_validate_inputs(tmp_path):
    settings = ConnectionSettings.resolve(url="https://a:9200,https://b:9200", user="u", password="pw", env={})
    assert settings.urls == ("https://a:9200", "https://b:9200")
    assert settings.verify_certs is True
    assert "pw" not in repr(settings) and "pw" not in settings.describe()
    with pytest.raises(ConfigError, match="CA file"):
        ConnectionSettings.resolve(ca_file=str(tmp_path / "missing.pem"), env={})
    with pytest.raises(ConfigError, match="not in the URL"):
        ConnectionSettings.resolve(url="http://u:pw@host:9200", env={})
    env = {"RSRT_OPENSEARCH_URL": "http://x:1", "RSRT_OPENSEARCH_VERIFY": "false"}
    assert ConnectionSettings.resolve(env=env).verify_certs is False


def test_lifecycle_stop_leaves_no_process_and_restart_reuses_artifacts(cli_env):
    """`node start` → `status` → `stop` through the CLI, on its own ports and data dir."""
    http_port = free_port_block(1, 19400)
    transport_port = free_port_block(1, 19500)
    name = "rsrt-lifecycle"
    started = time.monotonic()
    result = run_cli(["node", "start", "--name", name, "--fresh", "--heap", "512m",
                      "--http-port", str(http_port), "--transport-port", str(transport_port)], cli_env)
    assert result.returncode == 0, result.stderr
    assert "fetching OpenSearch" not in result.stderr, "a second start must reuse the cached distribution"
    assert time.monotonic() - started < 120
    cluster = LocalCluster(NodeSettings(name=name, http_port=http_port, transport_port=transport_port))
    pids = cluster.running_pids()
    assert len(pids) == 1
    status = run_cli(["node", "status", "--name", name], {k: v for k, v in cli_env.items()
                                                           if k != "RSRT_OPENSEARCH_URL"})
    assert status.returncode == 0, status.stderr
    assert f"127.0.0.1:{http_port}" in status.stdout and "opensearch-knn" in status.stdout
    stop = run_cli(["node", "stop", "--name", name], cli_env)
    assert stop.returncode == 0 and "stopped 1" in stop.stdout
    assert not any(_pid_alive(pid) for pid in pids)
    assert cluster.health() is None


def test_provision_is_cached():
    started = time.monotonic()
    path = provision()
    assert (path / "bin" / "opensearch").exists()
    assert (path / "plugins" / "opensearch-knn").is_dir()
    assert (path / "modules" / "lang-painless" / "plugin-security.policy").exists()
    assert (path / "modules" / "reindex" / "plugin-security.policy").exists()
    assert (path / "plugins" / "opensearch-ml").is_dir() and (path / "plugins" / "opensearch-job-scheduler").is_dir()
    assert (path / "ml-native" / "libtorch" / "libtorch_cpu.so").exists()
    assert (path / "ml-native" / "jni" / "libdjl_torch.so").exists()
    assert time.monotonic() - started < 2


def test_plugins_install_after_the_plugins_they_extend(tmp_path):
    def plugin_zip(name: str, extends: str) -> Path:
        path = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("plugin-descriptor.properties", f"name={name}\nextended.plugins={extends}\n")
        return path

    zips = {"ml": plugin_zip("ml", "scheduler"), "knn": plugin_zip("knn", ""), "scheduler": plugin_zip("scheduler", "")}
    order = _install_order(zips)
    assert order.index("scheduler") < order.index("ml") and set(order) == set(zips)


def test_bad_node_settings_are_refused():
    with pytest.raises(ConfigError, match="--heap"):
        LocalCluster(NodeSettings(heap="lots"))
    with pytest.raises(ConfigError, match="--nodes"):
        LocalCluster(NodeSettings(nodes=0))


def test_port_in_use_is_named(opensearch_url):
    port = int(opensearch_url.rsplit(":", 1)[1])
    cluster = LocalCluster(NodeSettings(name="rsrt-clash", http_port=port, transport_port=free_port_block(1, 19600)))
    with pytest.raises(NodeError, match=f"port {port} on 127.0.0.1 is in use"):
        cluster.start()


@pytest.mark.slow
def test_three_node_cluster_survives_losing_a_node():
    """`--nodes 3`: real processes; an index with a replica still answers after one node dies."""
    http_port = free_port_block(3, 19700)
    transport_port = free_port_block(3, 19800)
    cluster = LocalCluster(NodeSettings(name="rsrt-three", nodes=3, http_port=http_port,
                                        transport_port=transport_port, heap="384m"))
    cluster.start(fresh=True)
    try:
        state = cluster.state()
        assert state is not None and len(state.pids) == 3
        client = connect(ConnectionSettings.resolve(url=f"http://127.0.0.1:{http_port + 1}", env={}))
        assert client.cluster.health()["number_of_nodes"] == 3
        client.indices.create(index="replicated", body={"settings": {"number_of_shards": 2,
                                                                     "number_of_replicas": 1}})
        for i in range(20):
            client.index(index="replicated", id=str(i), body={"text": f"doc {i}"})
        client.indices.refresh(index="replicated")
        client.cluster.health(wait_for_status="green", params={"timeout": "60s"}, request_timeout=70)
        cluster.stop_node(2)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            health = client.cluster.health()
            if health["number_of_nodes"] == 2 and health["status"] != "red":
                break
            time.sleep(1)
        assert client.count(index="replicated")["count"] == 20
    finally:
        cluster.stop()
    assert not any(_pid_alive(pid) for pid in state.pids)
