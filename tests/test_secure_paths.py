"""The main paths against a secured cluster, as least-privilege users would run them.

The session's secure node (`secure_node` in conftest.py: TLS with its own CA, basic auth, rsrt's roles):
`rsrt-ingest` ingests (and so deploys the encoder in the cluster) and evaluates; `rsrt-reader` searches
in every mode and embedding site, serves the API, and is refused anything else with one line naming
the permission; client certificates work in place of passwords. TLS mistakes (wrong CA, an expired
certificate, https against plain HTTP and the reverse) each give one clear line. Last, no password or
Authorization header is in any output, log, report or state file this module made.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import BENCHMARKS, serving
from rsrt.search._node.security import INDEX_PATTERNS, INGEST, READER
from rsrt.search.api import create_app
from rsrt.search.config import ConnectionSettings
from rsrt.search.index import RSRT_INDEX_PATTERN

pytestmark = pytest.mark.integration

THEMES = [  # (theme, one sentence, feature, caption)
    ("harbour", "Ships are moored at a gray harbour", "ships (small) west; dock (large) east",
     "Many boats are docked in the harbour."),
    ("airport", "Airplanes park beside a long runway", "airplanes (medium) north; runway (large) south",
     "Several planes are parked at the airport."),
    ("forest", "Dense green forest covers the hills", "trees (large) everywhere",
     "A thick forest with dark green trees."),
    ("stadium", "An oval stadium with a green pitch", "stadium (large) center; parking (medium) north",
     "A football stadium surrounded by parking lots."),
]
INDEX = "rsrt-secure-paths"
QUERY = "planes parked at the airport"
MODES = [(mode, embed) for mode in ("dense", "lexical", "hybrid") for embed in ("client", "cluster")]


def _box(i: int) -> tuple[float, float]:
    return -10.0 + (i % 6) * 2.0, 38.0 + (i // 6)


def _captions_file(path: Path) -> Path:
    lines = []
    for i in range(24):
        theme, sentence, feature, caption = THEMES[i % len(THEMES)]
        west, south = _box(i)
        lines.append({
            "image": f"{theme}-{i:02d}.jpg", "collection": "secure", "datetime": f"{2016 + i % 6}-06-01T10:00:00Z",
            "geometry": {"type": "Polygon", "coordinates": [[[west, south], [west + 1, south], [west + 1, south + 1],
                                                             [west, south + 1], [west, south]]]},
            "bbox": [west, south, west + 1, south + 1],
            "variants": [{"one_sentence": f"{sentence}, view {k}", "feature": feature, "caption": caption}
                         for k in range(5)]})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("secure-paths")


@pytest.fixture(scope="module")
def ingested(secure_node, cli_env, workdir) -> str:
    """`rsrt ingest captions` as rsrt-ingest: creates the index, deploys its encoder in the cluster."""
    env = secure_node.env(INGEST, cli_env)
    result = secure_node.run(["ingest", "captions", str(_captions_file(workdir / "captions.jsonl")),
                              "--index", INDEX, "--state-dir", str(workdir / "state")], env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "ingested 24" in result.stdout + result.stderr
    status = secure_node.run(["model", "status", "--index", INDEX], env)
    assert status.returncode == 0 and "DEPLOYED" in status.stdout, status.stdout + status.stderr
    return INDEX


def _first_line(result) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return lines[0] if lines else ""


def test_rsrt_roles_cover_the_index_names_rsrt_uses() -> None:
    assert INDEX_PATTERNS == [RSRT_INDEX_PATTERN]


@pytest.mark.parametrize(("mode", "embed"), MODES)
def test_the_reader_searches_in_every_mode_and_embedding_site(secure_node, cli_env, ingested, mode, embed):
    env = secure_node.env(READER, cli_env)
    result = secure_node.run(["search", QUERY, "--index", ingested, "--mode", mode, "--embed", embed,
                              "--k", "6", "--json"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    hits = json.loads(result.stdout)["hits"]
    assert [hit["image_id"].split("-")[0] for hit in hits] == ["airport"] * 6, hits


@pytest.mark.parametrize("args", [
    ["--mode", "hybrid", "--fusion-site", "server", "--embed", "cluster"],
    ["--mode", "hybrid", "--fusion-site", "server", "--fusion", "rrf", "--embed", "client"],
    ["--mode", "dense", "--embed", "cluster", "--bbox", "-10.5,37.5,-7.5,39.5"],  # the model's predict path
    ["--mode", "hybrid", "--embed", "client", "--bbox", "-10.5,37.5,-7.5,39.5", "--datetime", "2017-01-01/.."],
])
def test_the_reader_with_server_fusion_and_filters(secure_node, cli_env, ingested, args):
    env = secure_node.env(READER, cli_env)
    result = secure_node.run(["search", QUERY, "--index", ingested, "--k", "3", "--json", *args], env)
    assert result.returncode == 0, result.stdout + result.stderr
    ids = [hit["image_id"] for hit in json.loads(result.stdout)["hits"]]
    assert ids and ids[0].startswith("airport"), ids
    if "--bbox" in args:  # it meets boxes 0, 1 (row 38) and 6, 7 (row 39); from 2017 on, 1 and 7 only
        inside = {"airport-01", "stadium-07"} if "--datetime" in args else {
            "harbour-00", "airport-01", "forest-06", "stadium-07"}
        assert ids[0] == "airport-01" and set(ids) <= inside, ids


def test_the_api_serves_with_the_readers_credentials(secure_node, ingested):
    app = create_app(client=secure_node.client(READER), index=ingested, max_limit=100)
    with serving(app) as base, httpx.Client(base_url=base, timeout=120) as http:
        health = http.get("/healthz")
        assert health.status_code == 200 and health.json()["documents"] == 24, health.text
        for params in ({"q": QUERY, "limit": 3}, {"q": QUERY, "limit": 3, "mode": "dense"},
                       {"q": QUERY, "limit": 3, "mode": "lexical", "bbox": "-10.5,37.5,-7.5,39.5"}):
            found = http.get("/search", params=params)
            assert found.status_code == 200, found.text
            ids = [feature["id"] for feature in found.json()["features"]]
            assert ids and ids[0].startswith("airport"), (params, ids)
        assert http.get("/collections/secure/items/airport-01").status_code == 200
        assert http.get("/collections").json()["collections"][0]["id"] == "secure"


def test_the_evaluation_runs_as_the_ingest_user(secure_node, cli_env, workdir):
    env = secure_node.env(INGEST, cli_env)
    out = workdir / "eval"
    result = secure_node.run(["eval", "--benchmark", "sydney", "--data-dir", str(BENCHMARKS), "--modes",
                              "lexical,dense,hybrid", "--no-exact", "--check", "sydney-loo", "--out", str(out)],
                             env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "regression sydney-loo: 3 condition(s) checked, 0 failure(s)" in result.stdout


def test_the_reader_cannot_write_and_is_told_which_permission(secure_node, cli_env, ingested, workdir):
    env = secure_node.env(READER, cli_env)
    result = secure_node.run(["ingest", "captions", str(workdir / "captions.jsonl"), "--index", ingested,
                              "--state-dir", str(workdir / "reader-state")], env)
    assert result.returncode == 1
    line = _first_line(result)
    assert line.startswith("error: ") and "HTTP 403" in line and "user 'rsrt-reader' lacks the permission " in line
    deleted = secure_node.run(["index", "delete", "--index", ingested, "--yes"], env)
    assert deleted.returncode == 1 and "lacks the permission indices:admin/" in _first_line(deleted), (
        deleted.stdout + deleted.stderr)
    assert secure_node.client(INGEST).count(index=ingested)["count"] == 24


def test_client_certificates_authenticate_as_their_user(secure_node, cli_env, ingested):
    cert, key = secure_node.cluster.security.client_cert(READER)
    env = secure_node.env(None, cli_env)
    args = ["--client-cert", str(cert), "--client-key", str(key)]
    found = secure_node.run(["search", QUERY, "--index", ingested, "--k", "1", "--json", *args], env)
    assert found.returncode == 0, found.stdout + found.stderr
    assert json.loads(found.stdout)["hits"][0]["image_id"].startswith("airport")
    refused = secure_node.run(["index", "delete", "--index", ingested, "--yes", *args], env)
    assert refused.returncode == 1 and "user 'rsrt-reader' lacks the permission" in _first_line(refused)
    without = secure_node.run(["search", QUERY, "--index", ingested], env)
    assert without.returncode == 1 and "rejected the credentials (HTTP 401)" in _first_line(without)


def test_an_evicted_model_is_redeployed_by_ingest_not_by_the_reader(secure_node, cli_env, ingested):
    ingest, reader = secure_node.env(INGEST, cli_env), secure_node.env(READER, cli_env)
    model_id = json.loads(ingested_meta(secure_node, ingested))["model_id"]
    assert secure_node.run(["model", "undeploy", model_id], ingest).returncode == 0
    try:
        refused = secure_node.run(["search", QUERY, "--index", ingested, "--embed", "cluster"], reader)
        assert refused.returncode == 1
        assert "lacks the permission cluster:admin/opensearch/ml/deploy_model" in _first_line(refused)
        auto = secure_node.run(["search", QUERY, "--index", ingested, "--k", "1", "--json"], reader)
        assert auto.returncode == 0, auto.stdout + auto.stderr
        assert json.loads(auto.stdout)["embed"] == "client"  # auto: rsrt's encoder, the same vectors
    finally:
        redeployed = secure_node.run(["model", "deploy", "--index", ingested], ingest, timeout=600)
        assert redeployed.returncode == 0, redeployed.stdout + redeployed.stderr


def ingested_meta(secure_node, index: str) -> str:
    mapping = secure_node.client(READER).indices.get_mapping(index=index)
    return json.dumps(next(iter(mapping.values()))["mappings"]["_meta"]["cluster_model"])


# --- TLS mistakes: one line each --------------------------------------------------------------------------


def _self_signed(folder: Path, *, expired: bool) -> tuple[Path, Path, Path]:
    """(CA, server certificate, key) for 127.0.0.1; the server certificate expired a day ago when asked."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=30))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    until = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=30)
    server = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(days=10)).not_valid_after(until)
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class _Json(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"version": {"number": "2.19.1"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def _loopback(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Json)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def expired_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    ca, cert, key = _self_signed(tmp_path_factory.mktemp("expired"), expired=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with _loopback(context) as url:
        yield url, ca


@pytest.fixture(scope="module")
def plain_server() -> Iterator[str]:
    with _loopback() as url:
        yield url


def _cli_line(secure_node, cli_env, url: str, *extra: str) -> str:
    env = secure_node.env(None, cli_env)
    env.pop("RSRT_OPENSEARCH_CA_FILE")
    result = secure_node.run(["search", QUERY, "--index", INDEX, "--url", url, *extra], env, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_a_wrong_ca_is_one_clear_line(secure_node, cli_env, workdir):
    other_ca = _self_signed(workdir, expired=False)[0]
    line = _cli_line(secure_node, cli_env, secure_node.url, "--ca-file", str(other_ca), "--user", READER)
    assert "TLS certificate of OpenSearch is not trusted" in line and "--ca-file" in line


def test_an_expired_certificate_is_one_clear_line(secure_node, cli_env, expired_server):
    url, ca = expired_server
    line = _cli_line(secure_node, cli_env, url, "--ca-file", str(ca))
    assert "TLS certificate of OpenSearch has expired" in line and "renew" in line


def test_https_against_plain_http_says_so(secure_node, cli_env, plain_server):
    line = _cli_line(secure_node, cli_env, plain_server.replace("http://", "https://"))
    assert "does not speak TLS" in line and "use an http:// URL" in line and "--ca-file" not in line


def test_http_against_a_tls_node_says_so(secure_node, cli_env):
    line = _cli_line(secure_node, cli_env, secure_node.url.replace("https://", "http://"), "--user", READER)
    assert "use an https:// URL" in line


def test_a_wrong_password_is_one_clear_line_from_the_cli(secure_node, cli_env):
    env = secure_node.env(READER, cli_env)
    env["RSRT_OPENSEARCH_PASSWORD"] = "not-the-password"
    result = secure_node.run(["search", QUERY, "--index", INDEX], env)
    assert result.returncode == 1 and "rejected the credentials (HTTP 401)" in _first_line(result)
    assert "not-the-password" not in result.stdout + result.stderr


# --- last: no secret anywhere -------------------------------------------------------------------------------


def test_no_password_or_authorization_header_in_any_output_log_report_or_state(secure_node, workdir):
    secrets = list(secure_node.passwords.values())
    secrets += [base64.b64encode(f"{user}:{password}".encode()).decode() for user, password in
                secure_node.passwords.items()]
    cluster = secure_node.cluster
    texts = {f"output {i}": text for i, text in enumerate(secure_node.outputs)}
    files = [cluster.state_file, *cluster.node_dir(0).joinpath("logs").glob("*.log"),
             *(path for path in workdir.rglob("*") if path.is_file() and path.suffix != ".png")]
    texts |= {str(path): path.read_text(errors="replace") for path in files}
    assert len(texts) > 20
    for name, text in texts.items():
        assert "Authorization" not in text, name
        assert not any(secret in text for secret in secrets), name
    settings = ConnectionSettings.resolve(url=secure_node.url, user=READER, password=secrets[0], env={})
    assert secrets[0] not in repr(settings) + settings.describe()
